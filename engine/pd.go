package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"servelab/serving"
)

// Prefill/decode disaggregation in the real engine, after vLLM's NixlConnector
// (vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py):
//
//   - A do_remote_decode request (Request.RemoteDecode) runs as usual; when its prompt has
//     been computed, its full prompt blocks gain a second reference (kv.Manager.Share), so
//     when it finishes at its length (vLLM delays the free only for FINISHED_LENGTH_CAPPED)
//     they stay allocated: neither evicted nor reused. Its last Output names them (HeldKV).
//     They are freed when a pull has read them (ClaimKV, KVClaim.Release), when nobody
//     claimed them within Config.KVTransferTimeout (vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT),
//     when the caller could not deliver the response (ReleaseKV), or at shutdown.
//   - A do_remote_prefill request (Request.RemotePrefill) is not queued for the scheduler on
//     arrival: the loop allocates blocks for the remote full blocks (in arrival order, as
//     blocks come free), and a goroutine of its own runs RemotePrefill.Fetch, which writes the
//     blocks' contents into them while the loop runs other requests' steps (those blocks
//     belong to no sequence the loop schedules). When the fetch ends the loop queues the
//     request with those blocks as its block table and their tokens computed, less the last
//     prompt token when they cover the whole prompt (vLLM's _update_waiting_for_remote_kv),
//     so its first step computes the rest of the prompt and samples the first token. A
//     failed fetch frees the blocks and ends the request with a *KVTransferError; an abort
//     during the fetch cancels it, and the blocks are freed once it has returned.

// KVBlockIO is the optional Executor interface that moves KV blocks' contents out of and
// into the cache, as model.KVCache's methods of these names do. An executor without it
// serves no disaggregated request. ReadBlock and WriteBlock are called from other
// goroutines than Execute's, only on blocks no sequence of the running step uses.
type KVBlockIO interface {
	BlockBytes() int
	ReadBlock(b int32, dst []byte)
	WriteBlock(b int32, src []byte)
}

// RemotePrefill makes a request's prompt KV come from another engine (vLLM's
// do_remote_prefill).
type RemotePrefill struct {
	// Blocks is how many leading full blocks of the prompt the remote engine holds.
	Blocks int
	// Fetch copies them: it calls put(i, data) for i = 0..Blocks-1 in order, data being
	// the i-th block as KVBlockIO.ReadBlock writes it (blockBytes long, and free to reuse
	// once put returns), and returns nil when every block was put. It must return when ctx
	// ends (the request was aborted); a put error ends it too.
	Fetch func(ctx context.Context, blockBytes int, put func(i int, data []byte) error) error
}

// HeldKV is what a finished do_remote_decode request left for a decode engine: its prompt's
// full blocks, held under RequestID until claimed (vLLM's remote_request_id and
// remote_block_ids).
type HeldKV struct {
	RequestID string
	Blocks    []int32
}

// KVTransferError ends a do_remote_prefill request whose blocks could not be fetched.
type KVTransferError struct{ Err error }

func (e *KVTransferError) Error() string {
	return fmt.Sprintf("the remote prefill's KV could not be fetched: %v", e.Err)
}

func (e *KVTransferError) Unwrap() error { return e.Err }

// Errors of ClaimKV.
var (
	// ErrKVNotHeld: no blocks are held under that request id (never, or no longer).
	ErrKVNotHeld = errors.New("engine: no KV blocks are held for that request")
	// ErrKVClaimed: another pull is reading the blocks.
	ErrKVClaimed = errors.New("engine: the request's KV blocks are being pulled already")
	// ErrKVBlocksMismatch: the block ids differ from those held.
	ErrKVBlocksMismatch = errors.New("engine: the block ids differ from the blocks held for that request")
	// ErrKVTransferUnsupported: the executor cannot move KV blocks (no KVBlockIO).
	ErrKVTransferUnsupported = errors.New("engine: this executor cannot transfer KV blocks")
)

// DefaultKVTransferTimeout is how long held blocks wait for a pull, as vLLM's
// VLLM_NIXL_ABORT_REQUEST_TIMEOUT (480 s).
const DefaultKVTransferTimeout = 480 * time.Second

// hold is a finished request's prompt blocks kept for a pull.
type hold struct {
	id      string
	holder  *serving.Seq
	blocks  []int32
	claimed bool
	timer   *time.Timer
}

// landing is a finished fetch.
type landing struct {
	r   *request
	err error
}

// pdState is the engine's disaggregation state.
type pdState struct {
	// Guarded by Engine.mu. The goroutine that removes a hold from holds owns freeing its
	// holder, which it hands to the loop through released.
	holds      map[string]*hold
	released   []*serving.Seq
	landed     []landing
	heldBlocks int
	// Owned by the loop: do_remote_prefill requests waiting for blocks to fetch into, and
	// those fetching.
	pending, fetching []*request
}

// pdRequest is a request's disaggregation state, owned by the loop.
type pdRequest struct {
	// holder references the prompt blocks held for a pull (prefill side), or the blocks
	// being fetched into (decode side).
	holder   *serving.Seq
	sreq     *serving.Request // decode side: queued once the fetch lands
	fetching bool
	cancel   context.CancelFunc
}

// validatePD checks a request's disaggregation fields.
func (e *Engine) validatePD(req *Request) error {
	rp := req.RemotePrefill
	if rp == nil && !req.RemoteDecode {
		return nil
	}
	if e.kvio == nil {
		return ErrKVTransferUnsupported
	}
	if rp == nil {
		return nil
	}
	switch full := len(req.Prompt) / e.cfg.BlockSize; {
	case req.RemoteDecode:
		return &InvalidRequestError{"kv_transfer_params", "do_remote_decode and do_remote_prefill cannot both be true"}
	case rp.Fetch == nil:
		return &InvalidRequestError{"kv_transfer_params", "a remote prefill needs a fetch"}
	case rp.Blocks != full:
		return &InvalidRequestError{"kv_transfer_params.remote_block_ids", fmt.Sprintf(
			"%d remote blocks for a prompt of %d tokens, which fills %d blocks of %d tokens", rp.Blocks, len(req.Prompt), full, e.cfg.BlockSize)}
	}
	return nil
}

// holdPrompt takes a second reference on r's full prompt blocks, just computed.
func (e *Engine) holdPrompt(r *request) {
	n := len(r.Prompt) / e.cfg.BlockSize
	h := &serving.Seq{Req: &serving.Request{}}
	e.inst.KV().Share(h, r.seq.Blocks[:n])
	r.pd.holder = h
}

// finishPD ends r's hold when r finishes: kept for a pull (the HeldKV its last output
// carries) when it finished at its length, freed otherwise.
func (e *Engine) finishPD(r *request, reason string) *HeldKV {
	h := r.pd.holder
	if h == nil {
		return nil
	}
	r.pd.holder = nil
	if reason != "length" {
		e.inst.KV().Free(h)
		return nil
	}
	hd := &hold{holder: h, blocks: slices.Clone(h.Blocks)}
	e.mu.Lock()
	id := r.ID
	for i := 2; e.pd.holds[id] != nil; i++ {
		id = r.ID + "-" + strconv.Itoa(i)
	}
	hd.id = id
	// Set before anyone can see hd (its callback waits for the lock).
	hd.timer = time.AfterFunc(e.cfg.KVTransferTimeout, func() { e.dropHold(hd) })
	e.pd.holds[id] = hd
	e.pd.heldBlocks += len(hd.blocks)
	e.mu.Unlock()
	return &HeldKV{RequestID: id, Blocks: slices.Clone(hd.blocks)}
}

// dropHold frees hd unless a pull has claimed it or it is gone already.
func (e *Engine) dropHold(hd *hold) {
	e.mu.Lock()
	if e.pd.holds[hd.id] != hd || hd.claimed {
		e.mu.Unlock()
		return
	}
	delete(e.pd.holds, hd.id)
	e.pd.released = append(e.pd.released, hd.holder)
	e.mu.Unlock()
	e.signal()
}

// ReleaseKV frees the blocks held under id unless a pull is reading them: the caller
// could not hand the HeldKV to anyone (the client went away before the response).
func (e *Engine) ReleaseKV(id string) {
	e.mu.Lock()
	hd := e.pd.holds[id]
	e.mu.Unlock()
	if hd != nil {
		hd.timer.Stop()
		e.dropHold(hd)
	}
}

// KVClaim is one pull's hold on a finished request's blocks.
type KVClaim struct {
	e    *Engine
	hd   *hold
	once sync.Once
}

// ClaimKV claims the blocks held under id for one pull, checking that blocks are exactly
// those held. The caller reads them with Read and must Release the claim, which frees them.
func (e *Engine) ClaimKV(id string, blocks []int32) (*KVClaim, error) {
	if e.kvio == nil {
		return nil, ErrKVTransferUnsupported
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	hd := e.pd.holds[id]
	switch {
	case hd == nil:
		return nil, ErrKVNotHeld
	case hd.claimed:
		return nil, ErrKVClaimed
	case !slices.Equal(blocks, hd.blocks):
		return nil, fmt.Errorf("%w: %d blocks asked, %d held", ErrKVBlocksMismatch, len(blocks), len(hd.blocks))
	}
	hd.claimed = true
	hd.timer.Stop()
	return &KVClaim{e: e, hd: hd}, nil
}

// BlockBytes is the size of one block's contents.
func (c *KVClaim) BlockBytes() int { return c.e.kvio.BlockBytes() }

// Len is the number of blocks claimed.
func (c *KVClaim) Len() int { return len(c.hd.blocks) }

// Read copies the i-th claimed block into dst (BlockBytes long).
func (c *KVClaim) Read(i int, dst []byte) { c.e.kvio.ReadBlock(c.hd.blocks[i], dst) }

// Release frees the claimed blocks; it is safe to call more than once.
func (c *KVClaim) Release() {
	c.once.Do(func() {
		e := c.e
		e.mu.Lock()
		if e.pd.holds[c.hd.id] != c.hd {
			e.mu.Unlock() // the engine shut down and freed it
			return
		}
		delete(e.pd.holds, c.hd.id)
		e.pd.released = append(e.pd.released, c.hd.holder)
		e.mu.Unlock()
		e.signal()
	})
}

// pdDrain runs in the loop: frees released holds, queues landed fetches and starts new
// ones.
func (e *Engine) pdDrain() {
	e.mu.Lock()
	released, landed := e.pd.released, e.pd.landed
	e.pd.released, e.pd.landed = nil, nil
	e.mu.Unlock()
	if len(released) > 0 {
		n := 0
		for _, h := range released {
			n += len(h.Blocks)
			e.inst.KV().Free(h)
		}
		e.mu.Lock()
		e.pd.heldBlocks -= n
		e.mu.Unlock()
	}
	for _, l := range landed {
		e.land(l.r, l.err)
	}
	e.startFetches()
}

// startFetches allocates blocks for waiting remote prefills, in arrival order, and starts
// their fetches.
func (e *Engine) startFetches() {
	for len(e.pd.pending) > 0 {
		r := e.pd.pending[0]
		h := &serving.Seq{Req: &serving.Request{}}
		if n := r.RemotePrefill.Blocks; n > 0 && !e.inst.KV().Allocate(h, n*e.cfg.BlockSize, 0) {
			return // waits for blocks to come free
		}
		e.pd.pending[0] = nil
		e.pd.pending = e.pd.pending[1:]
		r.pd.holder = h
		r.pd.fetching = true
		ctx, cancel := context.WithCancel(context.Background())
		r.pd.cancel = cancel
		e.pd.fetching = append(e.pd.fetching, r)
		blocks := slices.Clone(h.Blocks)
		kvio, fetch := e.kvio, r.RemotePrefill.Fetch
		size := kvio.BlockBytes()
		go func() {
			put := func(i int, data []byte) error {
				if i < 0 || i >= len(blocks) || len(data) != size {
					return fmt.Errorf("engine: fetch put block %d of %d bytes; want one of %d blocks of %d bytes", i, len(data), len(blocks), size)
				}
				kvio.WriteBlock(blocks[i], data)
				return nil
			}
			err := fetch(ctx, size, put)
			cancel()
			e.mu.Lock()
			e.pd.landed = append(e.pd.landed, landing{r, err})
			e.mu.Unlock()
			e.signal()
		}()
	}
}

// land queues a remote prefill whose fetch ended, or ends it.
func (e *Engine) land(r *request, err error) {
	r.pd.fetching = false
	if i := slices.Index(e.pd.fetching, r); i >= 0 {
		e.pd.fetching = slices.Delete(e.pd.fetching, i, i+1)
	}
	h := r.pd.holder
	r.pd.holder = nil
	if h == nil {
		return // freed at shutdown
	}
	if r.done || err != nil {
		e.inst.KV().Free(h)
		if !r.done {
			e.finishUnqueued(r, "error", &KVTransferError{err})
		}
		return
	}
	sreq := r.pd.sreq
	r.pd.sreq = nil
	s := e.inst.Add(sreq)
	s.Blocks = h.Blocks
	s.NumComputed = min(len(h.Blocks)*e.cfg.BlockSize, len(r.Prompt)-1)
	s.NumCachedPrompt = s.NumComputed
	r.seq = s
	e.live[s] = r
}

// abortRemote aborts a remote prefill the scheduler has not queued yet.
func (e *Engine) abortRemote(r *request) {
	if r.done {
		return
	}
	if i := slices.Index(e.pd.pending, r); i >= 0 {
		e.pd.pending = slices.Delete(e.pd.pending, i, i+1)
	}
	if r.pd.fetching {
		r.pd.cancel() // land frees the blocks once the fetch has returned
	}
	e.finishUnqueued(r, "abort", nil)
}

// finishUnqueued ends a request that never reached the scheduler.
func (e *Engine) finishUnqueued(r *request, reason string, err error) {
	r.done = true
	e.mu.Lock()
	if !r.scheduled {
		r.scheduled = true
		e.waiting--
	}
	e.open--
	e.mu.Unlock()
	if r.stopWatch != nil {
		r.stopWatch()
	}
	if m := e.cfg.Metrics; m != nil {
		m.success.WithLabelValues(reason).Inc()
	}
	r.stream.push(Output{Finished: true, FinishReason: reason, Err: err, PromptTokens: len(r.Prompt)})
}

// pdShutdown frees every hold and ends the remote prefills, as the loop stops.
func (e *Engine) pdShutdown() {
	for _, r := range slices.Clone(e.pd.pending) {
		e.abortRemote(r)
	}
	// Fetches still running write into blocks no step will read any more.
	for _, r := range e.pd.fetching {
		e.abortRemote(r)
		e.inst.KV().Free(r.pd.holder)
		r.pd.holder = nil
	}
	e.pd.fetching = nil
	e.mu.Lock()
	for id, hd := range e.pd.holds {
		hd.timer.Stop()
		delete(e.pd.holds, id)
		e.pd.released = append(e.pd.released, hd.holder)
	}
	e.mu.Unlock()
	e.pdDrain()
}
