package main

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/spf13/pflag"

	"servelab/engine"
	"servelab/engine/kv"
	"servelab/engine/kvoffload"
	"servelab/policies"
	"servelab/sim"
)

// tierFlags are the real engine's KV tiers: the simulator's --kv-tier (one parser, so the
// two worlds accept the same tiers) and vLLM's CPU offloading flags.
type tierFlags struct {
	specs             []string
	dir               string
	directIO          bool
	offloadingSize    float64
	offloadingBackend string
}

func (f *tierFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVar(&f.specs, "kv-tier", nil, "a KV-cache tier below the engine's KV blocks, MEDIUM:BLOCKS[:EVICT] as servelab sim's --kv-tier, top down (repeat: --kv-tier cpu:4096 --kv-tier disk:65536:s3fifo): evicted cached blocks are copied to it instead of dropped, and a prefix hit on it is loaded back before the step that reads it, the load time measured (servelab:kv_tier_load_seconds). MEDIUM is cpu (host memory) or disk (a file under --kv-tier-dir); EVICT any evict policy (lru). Needs prefix caching")
	fl.StringVar(&f.dir, "kv-tier-dir", "", "directory of the disk tier's file (required with a disk tier): preallocated to the tier's size at start, unlinked at once so nothing is left behind at exit")
	fl.BoolVar(&f.directIO, "kv-tier-direct-io", true, "read and write the disk tier's file with O_DIRECT where the file system allows (not tmpfs), so a load reads the device, not the page cache")
	fl.Float64Var(&f.offloadingSize, "kv-offloading-size", 0, "vLLM's spelling of a CPU tier: its size in GiB of host memory (the blocks it holds head the tiers); with --kv-tier it must not name a cpu tier too")
	fl.StringVar(&f.offloadingBackend, "kv-offloading-backend", "native", "vLLM's offloading backend for --kv-offloading-size: only native (servelab's own, as vLLM's OffloadingConnector) is supported")
}

// engineTiers are the tiers an engine runs, with their mover.
type engineTiers struct {
	configs []kv.TierConfig
	mover   *kvoffload.Mover
	disk    *kvoffload.DiskStore
}

// kvMover is the engine's KVMover: nil without tiers (not a typed nil).
func (t *engineTiers) kvMover() kv.Mover {
	if t == nil || t.mover == nil {
		return nil
	}
	return t.mover
}

func (t *engineTiers) kvTiers() []kv.TierConfig {
	if t == nil {
		return nil
	}
	return t.configs
}

func (t *engineTiers) close() error {
	if t == nil || t.mover == nil {
		return nil
	}
	return t.mover.Close()
}

// describe is the startup line, or "" without tiers.
func (t *engineTiers) describe(blockBytes int) string {
	if t == nil || t.mover == nil {
		return ""
	}
	var parts []string
	for _, c := range t.configs {
		s := fmt.Sprintf("%s %d blocks (%.2f GiB)", c.Medium, c.Blocks, float64(c.Blocks)*float64(blockBytes)/(1<<30))
		if c.Medium == kv.MediumDisk && t.disk != nil {
			io := "buffered I/O"
			if t.disk.Direct() {
				io = "O_DIRECT"
			}
			s += fmt.Sprintf(" in %s, %s", t.disk.Path(), io)
		}
		parts = append(parts, s)
	}
	return "KV tiers: " + strings.Join(parts, "; ")
}

// specsFor parses the flags into kv_tiers entries, vLLM's CPU size first.
func (f *tierFlags) specsFor(blockBytes int) ([]sim.KVTierSpec, error) {
	var specs []sim.KVTierSpec
	if f.offloadingSize != 0 {
		if f.offloadingBackend != "native" {
			return nil, fmt.Errorf("--kv-offloading-backend %q: only native is supported (servelab has no LMCache)", f.offloadingBackend)
		}
		if f.offloadingSize < 0 || math.IsNaN(f.offloadingSize) || math.IsInf(f.offloadingSize, 0) {
			return nil, fmt.Errorf("--kv-offloading-size %v: want a positive number of GiB", f.offloadingSize)
		}
		blocks := int(f.offloadingSize * (1 << 30) / float64(blockBytes))
		if blocks < 1 {
			return nil, fmt.Errorf("--kv-offloading-size %v: less than one KV block of %d bytes", f.offloadingSize, blockBytes)
		}
		specs = append(specs, sim.KVTierSpec{Medium: "cpu", Blocks: blocks})
	}
	for _, s := range f.specs {
		t, err := sim.ParseKVTier(s)
		if err != nil {
			return nil, fmt.Errorf("--kv-tier: %w", err)
		}
		if t.Preset != "" {
			return nil, fmt.Errorf("--kv-tier %q: a preset prices the simulator's loads; the real engine measures them (drop %q)", s, ":"+t.Preset)
		}
		if t.Medium == "cpu" && f.offloadingSize != 0 {
			return nil, fmt.Errorf("--kv-tier %q: --kv-offloading-size already makes the cpu tier", s)
		}
		specs = append(specs, t)
	}
	return specs, nil
}

// build resolves the tiers for a KV cache of blocks of blockSize tokens and opens their
// stores; nil without tiers. metrics, if set, observes every load.
func (f *tierFlags) build(cache kvoffload.BlockIO, blockSize int, prefixCaching bool, metrics *engine.Metrics) (*engineTiers, error) {
	bb := cache.BlockBytes()
	specs, err := f.specsFor(bb)
	if err != nil {
		return nil, err
	}
	if len(specs) == 0 {
		if f.dir != "" {
			return nil, errors.New("--kv-tier-dir without a disk tier (--kv-tier disk:BLOCKS)")
		}
		return nil, nil
	}
	if !prefixCaching {
		return nil, errors.New("--kv-tier and --kv-offloading-size need prefix caching: only cached prefix blocks are offloaded (drop --enable-prefix-caching=false)")
	}
	resolved, err := sim.ResolveKVTiers(specs, func(int) policies.Env { return policies.Env{BlockSize: blockSize} })
	if err != nil {
		return nil, fmt.Errorf("--kv-tier: %w", err)
	}
	t := &engineTiers{}
	var stores []kvoffload.Store
	fail := func(err error) (*engineTiers, error) {
		for _, s := range stores {
			s.Close()
		}
		return nil, err
	}
	for i, r := range resolved {
		ev, err := r.NewEvict(0)
		if err != nil {
			return fail(fmt.Errorf("--kv-tier %s: %w", specs[i].Medium, err))
		}
		t.configs = append(t.configs, kv.TierConfig{Medium: r.Medium, Blocks: r.Blocks, Evict: ev})
		switch r.Medium {
		case kv.MediumCPU:
			s, err := kvoffload.NewHostStore(r.Blocks, bb)
			if err != nil {
				flag := fmt.Sprintf("--kv-tier cpu:%d", r.Blocks)
				if f.offloadingSize != 0 {
					flag = fmt.Sprintf("--kv-offloading-size %v", f.offloadingSize)
				}
				return fail(fmt.Errorf("%s: %w", flag, err))
			}
			stores = append(stores, s)
		case kv.MediumDisk:
			if f.dir == "" {
				return fail(errors.New("--kv-tier disk: needs --kv-tier-dir DIR, where the tier's file lives"))
			}
			s, err := kvoffload.NewDiskStore(kvoffload.DiskOptions{Dir: f.dir, Slots: r.Blocks, BlockBytes: bb, Direct: f.directIO})
			if err != nil {
				return fail(fmt.Errorf("--kv-tier-dir: %w", err))
			}
			t.disk = s
			stores = append(stores, s)
		}
	}
	if t.disk == nil && f.dir != "" {
		return fail(errors.New("--kv-tier-dir without a disk tier (--kv-tier disk:BLOCKS)"))
	}
	if t.mover, err = kvoffload.NewMover(cache, stores); err != nil {
		return fail(err)
	}
	if metrics != nil {
		t.mover.OnLoad = metrics.ObserveKVLoad
	}
	return t, nil
}
