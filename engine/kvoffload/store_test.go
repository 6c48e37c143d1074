package kvoffload

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"servelab/engine/kv"
)

// fakeCache is a BlockIO of plain byte blocks.
type fakeCache struct{ blocks [][]byte }

func newFakeCache(n, blockBytes int, seed uint64) *fakeCache {
	rng := rand.New(rand.NewPCG(seed, 1))
	c := &fakeCache{}
	for range n {
		b := make([]byte, blockBytes)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		c.blocks = append(c.blocks, b)
	}
	return c
}

func (c *fakeCache) BlockBytes() int                { return len(c.blocks[0]) }
func (c *fakeCache) ReadBlock(b int32, dst []byte)  { copy(dst, c.blocks[b]) }
func (c *fakeCache) WriteBlock(b int32, src []byte) { copy(c.blocks[b], src) }

func newDisk(t *testing.T, slots, blockBytes int, direct bool) *DiskStore {
	t.Helper()
	d, err := NewDiskStore(DiskOptions{Dir: t.TempDir(), Slots: slots, BlockBytes: blockBytes, Direct: direct})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// TestMoverRoundTrip moves blocks accelerator -> CPU -> disk -> accelerator through the
// mover's calls, in the order the block manager makes them, for block sizes that do and do
// not fill whole aligned slots, with and without direct I/O: the bytes that come back are
// the bytes that left.
func TestMoverRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		blockBytes int
		direct     bool
	}{
		{"aligned direct", 2 * align, true},
		{"unaligned direct", 3000, true},
		{"unaligned buffered", 5000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := newFakeCache(4, tc.blockBytes, 3)
			want := make([][]byte, 4)
			for i, b := range cache.blocks {
				want[i] = bytes.Clone(b)
			}
			host, err := NewHostStore(2, tc.blockBytes)
			if err != nil {
				t.Fatal(err)
			}
			disk := newDisk(t, 3, tc.blockBytes, tc.direct)
			mv, err := NewMover(cache, []Store{host, disk})
			if err != nil {
				t.Fatal(err)
			}
			var loads []string
			mv.OnLoad = func(medium string, s float64) {
				if s <= 0 {
					t.Errorf("%s load took %v s", medium, s)
				}
				loads = append(loads, medium)
			}
			// Blocks 0 and 1 go to the CPU; block 0's contents move on to disk to make
			// room for block 2's.
			mv.Offload(0, 0)
			mv.Offload(1, 1)
			mv.Demote(0, 0, 2)
			mv.Offload(2, 0)
			// Loading block 0 back from disk and block 1 from the CPU into blocks 3 and
			// 0 (block 0's own contents are stale by now).
			clear(cache.blocks[0])
			mv.Fetch(1, 2, 0)
			mv.Fetch(0, 1, 1)
			// The CPU slot just fetched is reused before the load: the staging copy holds.
			mv.Offload(3, 1)
			mv.Load(1, 0, 3)
			mv.Load(0, 1, 0)
			if !bytes.Equal(cache.blocks[3], want[0]) {
				t.Errorf("block 0's contents did not come back from disk")
			}
			if !bytes.Equal(cache.blocks[0], want[1]) {
				t.Errorf("block 1's contents did not come back from the CPU")
			}
			got := mv.Counters()
			if got[0].Stored != 4 || got[0].Loaded != 1 || got[1].Stored != 1 || got[1].Loaded != 1 {
				t.Errorf("counters %+v", got)
			}
			if strings.Join(loads, ",") != kv.MediumDisk+","+kv.MediumCPU {
				t.Errorf("OnLoad saw %v", loads)
			}
		})
	}
}

// TestDiskStoreDirect: on a file system that supports O_DIRECT (ext4, xfs; not tmpfs) the
// store uses it when asked; the file is unlinked at once, so nothing is left in the
// directory even while the store is open.
func TestDiskStoreDirect(t *testing.T) {
	dir := t.TempDir()
	d, err := NewDiskStore(DiskOptions{Dir: dir, Slots: 4, BlockBytes: 100, Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Bytes() != 4*align {
		t.Errorf("file of %d bytes, want %d", d.Bytes(), 4*align)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("directory holds %v while the store is open; want its file unlinked", ents)
	}
	if !strings.HasPrefix(d.Path(), dir) {
		t.Errorf("Path %q outside %q", d.Path(), dir)
	}
	t.Logf("direct I/O on %s: %v", dir, d.Direct())
}

func TestDiskStoreErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	readOnly := t.TempDir()
	if err := os.Chmod(readOnly, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(readOnly, 0o700) })
	tests := []struct {
		name string
		opts DiskOptions
		want string
		skip bool
	}{
		{"missing", DiskOptions{Dir: filepath.Join(file, "..", "nope"), Slots: 1, BlockBytes: 10}, "no such file or directory", false},
		{"not a directory", DiskOptions{Dir: file, Slots: 1, BlockBytes: 10}, "not a directory", false},
		{"unwritable", DiskOptions{Dir: readOnly, Slots: 1, BlockBytes: 10}, "cannot create the tier's file: ", os.Geteuid() == 0},
		{"too small", DiskOptions{Dir: t.TempDir(), Slots: 1 << 30, BlockBytes: 1 << 20}, "1073741824 blocks need 1048576.00 GiB, the file system has", false},
		{"no directory", DiskOptions{Slots: 1, BlockBytes: 10}, "needs a directory", false},
		{"no slots", DiskOptions{Dir: t.TempDir(), BlockBytes: 10}, "want positive sizes", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.skip {
				t.Skip("root writes into a read-only directory")
			}
			_, err := NewDiskStore(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if tc.opts.Dir != "" && !strings.Contains(err.Error(), tc.opts.Dir) && tc.name != "no slots" {
				t.Errorf("err %q does not name the directory", err)
			}
		})
	}
}

func TestHostStoreTooLarge(t *testing.T) {
	_, err := NewHostStore(1<<30, 1<<20)
	if err == nil || !strings.Contains(err.Error(), "host tier: 1073741824 blocks need 1048576.00 GiB, the machine has") {
		t.Fatalf("err = %v", err)
	}
}
