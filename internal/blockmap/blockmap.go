// Package blockmap is a hash map from 64-bit block hashes to int32 block or node
// indices, for the prefix caches of the engine and the router. Go's built-in map degrades
// under their churn (a steady stream of inserts and deletes at constant size leaves
// tombstones that lengthen probes); this one uses linear probing with backward-shift
// deletion, so it never degrades and never allocates once grown.
package blockmap

// Map maps uint64 keys to int32 values. The zero value is an empty map.
type Map struct {
	slots []slot
	n     int
	shift uint8
}

// slot keeps key, value and occupancy together: one cache line per probe.
type slot struct {
	key  uint64
	val  int32
	used bool
}

// New returns a map sized for about n entries.
func New(n int) *Map {
	m := &Map{}
	m.resize(max(16, 2*n))
	return m
}

// Len is the number of entries.
func (m *Map) Len() int { return m.n }

// home is the key's preferred slot: Fibonacci hashing spreads keys that are not already
// well mixed.
func (m *Map) home(k uint64) int { return int((k * 0x9e3779b97f4a7c15) >> m.shift) }

func (m *Map) resize(size int) {
	bits := uint8(4)
	for 1<<bits < size {
		bits++
	}
	old := m.slots
	m.slots = make([]slot, 1<<bits)
	m.shift = 64 - bits
	m.n = 0
	for _, s := range old {
		if s.used {
			m.Put(s.key, s.val)
		}
	}
}

// probe returns the slot holding k, or the empty slot where k belongs.
func (m *Map) probe(k uint64) (i int, found bool) {
	mask := len(m.slots) - 1
	for i = m.home(k); m.slots[i].used; i = (i + 1) & mask {
		if m.slots[i].key == k {
			return i, true
		}
	}
	return i, false
}

// Get returns the value of k.
func (m *Map) Get(k uint64) (int32, bool) {
	if m.n == 0 {
		return 0, false
	}
	if i, found := m.probe(k); found {
		return m.slots[i].val, true
	}
	return 0, false
}

// Prefetch reads the slot where each key's probe starts and returns a value to discard.
// Reads that do not depend on one another overlap their cache misses, where lookups one
// after another wait for each: a caller about to look up, insert or delete many keys in a
// map far larger than the CPU's caches calls it first, so those operations find their
// slots in cache. It changes nothing.
func (m *Map) Prefetch(keys []uint64) (sink uint64) {
	if len(m.slots) == 0 {
		return 0
	}
	for _, k := range keys {
		sink += m.slots[m.home(k)].key
	}
	return sink
}

// Has reports whether k is present.
func (m *Map) Has(k uint64) bool {
	_, ok := m.Get(k)
	return ok
}

// Put sets the value of k.
func (m *Map) Put(k uint64, v int32) {
	if _, found := m.PutIfAbsent(k, v); found {
		i, _ := m.probe(k)
		m.slots[i].val = v
	}
}

// PutIfAbsent sets k to v unless k is present; it returns the present value and true in
// that case. One probe sequence serves both the lookup and the insert.
func (m *Map) PutIfAbsent(k uint64, v int32) (int32, bool) {
	if 2*(m.n+1) > len(m.slots) {
		m.resize(2 * len(m.slots))
	}
	i, found := m.probe(k)
	if found {
		return m.slots[i].val, true
	}
	m.slots[i] = slot{key: k, val: v, used: true}
	m.n++
	return 0, false
}

// Delete removes k, shifting later entries of its probe run back into the hole so that
// lookups never stop early.
func (m *Map) Delete(k uint64) bool {
	if m.n == 0 {
		return false
	}
	mask := len(m.slots) - 1
	hole := m.home(k)
	for m.slots[hole].key != k || !m.slots[hole].used {
		if !m.slots[hole].used {
			return false
		}
		hole = (hole + 1) & mask
	}
	for j := (hole + 1) & mask; m.slots[j].used; j = (j + 1) & mask {
		h := m.home(m.slots[j].key)
		// The entry at j stays unless its home lies cyclically outside (hole, j].
		var stays bool
		if hole <= j {
			stays = hole < h && h <= j
		} else {
			stays = hole < h || h <= j
		}
		if !stays {
			m.slots[hole] = m.slots[j]
			hole = j
		}
	}
	m.slots[hole] = slot{}
	m.n--
	return true
}

// Range calls f for every entry in slot order (not a meaningful order), stopping when f
// returns false.
func (m *Map) Range(f func(k uint64, v int32) bool) {
	for _, s := range m.slots {
		if s.used && !f(s.key, s.val) {
			return
		}
	}
}
