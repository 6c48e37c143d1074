package backend

import "servelab/engine"

// The executor moves KV blocks in and out of the cache for prefill/decode disaggregation.
var _ engine.KVBlockIO = (*executor)(nil)

func (x *executor) BlockBytes() int { return x.cache.BlockBytes() }

func (x *executor) ReadBlock(b int32, dst []byte) { x.cache.ReadBlock(b, dst) }

func (x *executor) WriteBlock(b int32, src []byte) { x.cache.WriteBlock(b, src) }
