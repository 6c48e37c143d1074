package kv

// Mover moves blocks' contents as the manager moves their hashes between the accelerator
// and the tiers below it. The manager does the bookkeeping only and calls a Mover, when
// Config.Mover is set, at the moment each hash moves, so the contents follow: the real
// engine's backend copies KV bytes into host memory and a file, while the simulator,
// which only charges the time, leaves it nil. Calls come from Allocate, synchronously and
// in order, before the step that uses the blocks runs. Tiers are numbered as in
// Config.Tiers (0 is the first below the accelerator); slots are a tier's block indices in
// [0, TierConfig.Blocks).
//
// A Mover cannot refuse: the manager has already decided. An implementation whose storage
// fails records the error for its owner to act on.
type Mover interface {
	// Offload copies accelerator block b's contents into slot of tier 0, before b is
	// reused for other tokens.
	Offload(b int32, slot int32)
	// Demote copies slot from of tier into slot to of tier+1, before from is reused.
	Demote(tier int, from, to int32)
	// Fetch reads slot of tier, whose hash an allocation is loading back, into staging
	// buffer i (the block's index in the allocation's cached prefix). The slot may be
	// reused by offloads before Load, so its contents must be copied now.
	Fetch(tier int, slot int32, i int)
	// Load writes staging buffer i, filled by Fetch from tier, into accelerator block b,
	// which the allocation just took for it.
	Load(tier int, i int, b int32)
}
