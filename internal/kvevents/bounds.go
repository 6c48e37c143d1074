package kvevents

import (
	"encoding/binary"
	"fmt"
)

// maxDepth bounds how deeply a batch's msgpack may nest: vLLM's batches nest four levels
// (batch, events, event, hashes or token ids).
const maxDepth = 16

// checkBounds walks payload's msgpack without decoding it and refuses what would make the
// decoder allocate or recurse beyond the payload: a container or string whose declared
// length exceeds the bytes left (every element takes at least one byte), nesting deeper
// than maxDepth, or a truncated value. A 5-byte payload declaring an array of 2^32 elements
// made msgpack allocate 64 GiB and crash the process that read it.
func checkBounds(p []byte) error {
	pending := []uint64{1} // elements still to read at each open level
	for i := 0; len(pending) > 0; {
		if pending[len(pending)-1] == 0 {
			pending = pending[:len(pending)-1]
			continue
		}
		pending[len(pending)-1]--
		if i >= len(p) {
			return fmt.Errorf("msgpack: truncated at byte %d", i)
		}
		c := p[i]
		i++
		// size reads an n-byte big-endian length at i.
		size := func(n int) (uint64, error) {
			if len(p)-i < n {
				return 0, fmt.Errorf("msgpack: truncated length at byte %d", i)
			}
			var v uint64
			switch n {
			case 1:
				v = uint64(p[i])
			case 2:
				v = uint64(binary.BigEndian.Uint16(p[i:]))
			case 4:
				v = uint64(binary.BigEndian.Uint32(p[i:]))
			}
			i += n
			return v, nil
		}
		var skip, elems uint64 // bytes of payload to skip; elements of a container
		container := false
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			elems, container = 2*uint64(c&0x0f), true
		case c >= 0x90 && c <= 0x9f:
			elems, container = uint64(c&0x0f), true
		case c >= 0xa0 && c <= 0xbf:
			skip = uint64(c & 0x1f)
		case c == 0xc4 || c == 0xd9:
			skip, err = size(1)
		case c == 0xc5 || c == 0xda:
			skip, err = size(2)
		case c == 0xc6 || c == 0xdb:
			skip, err = size(4)
		case c == 0xc7 || c == 0xc8 || c == 0xc9: // ext 8/16/32: length, type byte, data
			skip, err = size(1 << (c - 0xc7))
			skip++
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c >= 0xcc && c <= 0xcf:
			skip = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3:
			skip = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8: // fixext 1/2/4/8/16: type byte, data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			elems, err = size(2)
			container = true
		case c == 0xdd:
			elems, err = size(4)
			container = true
		case c == 0xde:
			elems, err = size(2)
			elems, container = 2*elems, true
		case c == 0xdf:
			elems, err = size(4)
			elems, container = 2*elems, true
		default:
			return fmt.Errorf("msgpack: byte %#x at %d is no type", c, i-1)
		}
		if err != nil {
			return err
		}
		left := uint64(len(p) - i)
		switch {
		case skip > left:
			return fmt.Errorf("msgpack: a value of %d bytes at byte %d, %d left", skip, i, left)
		case container && elems > left:
			return fmt.Errorf("msgpack: a container of %d elements at byte %d, %d bytes left", elems, i, left)
		case container && elems > 0:
			if len(pending) >= maxDepth {
				return fmt.Errorf("msgpack: nested deeper than %d", maxDepth)
			}
			pending = append(pending, elems)
		}
		i += int(skip)
	}
	return nil
}
