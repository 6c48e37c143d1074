// Package kvoffload is the real engine's data path below its KV blocks: a host-memory
// store and a file-backed disk store of block contents, and the kv.Mover that copies
// blocks between them and the model's KV cache as the block manager moves their hashes
// (vLLM's KV offloading: its OffloadingConnector copies evicted GPU blocks to CPU memory
// and loads prefix hits back; LMCache and llm-d add a disk tier under it).
//
// The block manager (engine/kv) decides; this package only copies, and measures what each
// load back costs.
package kvoffload

import (
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"servelab/engine/kv"
)

// align is the alignment of every buffer and of the disk file's slots: direct I/O
// (O_DIRECT) needs the memory, the offset and the length aligned to the device's logical
// block, at most 4096 bytes on the devices Linux supports for it.
const align = 4096

// Store holds the contents of a tier's blocks, slot-addressed.
type Store interface {
	// Medium is the tier's name in KV events: kv.MediumCPU or kv.MediumDisk.
	Medium() string
	// Slots is the capacity in blocks.
	Slots() int
	// Read copies slot's contents into dst (a buffer from NewBuffer).
	Read(slot int32, dst []byte) error
	// Write stores src (a buffer from NewBuffer) as slot's contents.
	Write(slot int32, src []byte) error
	// Close releases the store's memory or file.
	Close() error
}

// slotBytes is a slot's size for blocks of blockBytes: rounded up to the alignment.
func slotBytes(blockBytes int) int { return (blockBytes + align - 1) / align * align }

// NewBuffer returns a zeroed buffer for one block of blockBytes, aligned for direct I/O
// and sized to a whole slot (its first blockBytes hold the block).
func NewBuffer(blockBytes int) []byte {
	n := slotBytes(blockBytes)
	raw := make([]byte, n+align)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&raw[0])) % align); r != 0 {
		off = align - r
	}
	return raw[off : off+n : off+n]
}

// HostStore is the CPU tier: block contents in process memory, one aligned buffer per
// slot, allocated as the slot is first written (NewHostStore refuses a size beyond the
// memory available when it starts).
type HostStore struct {
	blockBytes int
	slots      [][]byte
}

// NewHostStore returns a host-memory store of slots blocks of blockBytes each.
func NewHostStore(slots, blockBytes int) (*HostStore, error) {
	if slots <= 0 || blockBytes <= 0 {
		return nil, fmt.Errorf("kvoffload: host store of %d slots of %d bytes: want positive sizes", slots, blockBytes)
	}
	size := uint64(slots) * uint64(slotBytes(blockBytes))
	if avail, ok := availableMemory(); ok && size > avail {
		return nil, fmt.Errorf("host tier: %d blocks need %s, the machine has %s of memory available", slots, gib(size), gib(avail))
	}
	return &HostStore{blockBytes: blockBytes, slots: make([][]byte, slots)}, nil
}

func (s *HostStore) Medium() string { return kv.MediumCPU }
func (s *HostStore) Slots() int     { return len(s.slots) }

// slot returns slot's buffer, allocating it on first use.
func (s *HostStore) slot(i int32) []byte {
	if s.slots[i] == nil {
		s.slots[i] = NewBuffer(s.blockBytes)
	}
	return s.slots[i]
}

func (s *HostStore) Read(slot int32, dst []byte) error {
	copy(dst, s.slot(slot))
	return nil
}

func (s *HostStore) Write(slot int32, src []byte) error {
	copy(s.slot(slot), src)
	return nil
}

// swap exchanges slot's buffer with buf (a buffer from NewBuffer) and returns the slot's:
// a load takes the slot's contents without copying them.
func (s *HostStore) swap(slot int32, buf []byte) []byte {
	old := s.slot(slot)
	s.slots[slot] = buf
	return old
}

func (s *HostStore) Close() error {
	s.slots = nil
	return nil
}

// DiskStore is the disk tier: one preallocated file, slot i at offset i x slot size. The
// file is unlinked as soon as it is created, so it disappears when the store is closed or
// the process exits, however it exits; it is not synced (the tier is a cache, lost on
// restart like the others).
type DiskStore struct {
	file       *os.File
	path       string
	slots      int
	slotBytes  int
	blockBytes int
	direct     bool
}

// DiskOptions configure a disk store.
type DiskOptions struct {
	// Dir is where the file is created; it must exist and be writable.
	Dir string
	// Slots is the capacity in blocks of BlockBytes.
	Slots, BlockBytes int
	// Direct opens the file with O_DIRECT where the platform and the file system allow it,
	// so loads read the device rather than the page cache; NewDiskStore falls back to
	// buffered I/O where they do not (see DiskStore.Direct).
	Direct bool
}

// NewDiskStore creates and preallocates the disk tier's file in opts.Dir. It fails with an
// error naming the directory when it is missing, not writable or has too little free
// space for the whole file.
func NewDiskStore(opts DiskOptions) (*DiskStore, error) {
	if opts.Slots <= 0 || opts.BlockBytes <= 0 {
		return nil, fmt.Errorf("kvoffload: disk store of %d slots of %d bytes: want positive sizes", opts.Slots, opts.BlockBytes)
	}
	if opts.Dir == "" {
		return nil, fmt.Errorf("kvoffload: the disk tier needs a directory")
	}
	st, err := os.Stat(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("disk tier directory %s: %w", opts.Dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("disk tier directory %s: not a directory", opts.Dir)
	}
	sb := slotBytes(opts.BlockBytes)
	size := int64(opts.Slots) * int64(sb)
	if free, ok := freeBytes(opts.Dir); ok && free < uint64(size) {
		return nil, fmt.Errorf("disk tier directory %s: %d blocks need %s, the file system has %s free",
			opts.Dir, opts.Slots, gib(uint64(size)), gib(free))
	}
	f, err := os.CreateTemp(opts.Dir, "servelab-kv-*.bin")
	if err != nil {
		return nil, fmt.Errorf("disk tier directory %s: cannot create the tier's file: %w", opts.Dir, err)
	}
	path := f.Name()
	// Unlinked now: the open file lives until it is closed, and nothing is left behind.
	if err := os.Remove(path); err != nil {
		f.Close()
		return nil, fmt.Errorf("disk tier file %s: %w", path, err)
	}
	if err := preallocate(f, size); err != nil {
		f.Close()
		return nil, fmt.Errorf("disk tier directory %s: cannot allocate %s for %d blocks: %w", opts.Dir, gib(uint64(size)), opts.Slots, err)
	}
	s := &DiskStore{file: f, path: path, slots: opts.Slots, slotBytes: sb, blockBytes: opts.BlockBytes}
	if opts.Direct {
		if d, ok := reopenDirect(f); ok {
			s.file, s.direct = d, true
			f.Close()
		}
	}
	return s, nil
}

func gib(n uint64) string { return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30)) }

func (s *DiskStore) Medium() string { return kv.MediumDisk }
func (s *DiskStore) Slots() int     { return s.slots }

// Path is where the file was created (it is unlinked: the name no longer exists).
func (s *DiskStore) Path() string { return filepath.Clean(s.path) }

// Direct reports whether the file is read and written with O_DIRECT.
func (s *DiskStore) Direct() bool { return s.direct }

// Bytes is the file's size.
func (s *DiskStore) Bytes() int64 { return int64(s.slots) * int64(s.slotBytes) }

func (s *DiskStore) Read(slot int32, dst []byte) error {
	n, err := s.file.ReadAt(dst[:s.slotBytes], int64(slot)*int64(s.slotBytes))
	if err != nil {
		return fmt.Errorf("disk tier: read slot %d of %s: %w", slot, s.path, err)
	}
	if n != s.slotBytes {
		return fmt.Errorf("disk tier: read slot %d of %s: %d of %d bytes", slot, s.path, n, s.slotBytes)
	}
	return nil
}

func (s *DiskStore) Write(slot int32, src []byte) error {
	if _, err := s.file.WriteAt(src[:s.slotBytes], int64(slot)*int64(s.slotBytes)); err != nil {
		return fmt.Errorf("disk tier: write slot %d of %s: %w", slot, s.path, err)
	}
	return nil
}

func (s *DiskStore) Close() error { return s.file.Close() }
