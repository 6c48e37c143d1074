package sim

import "container/heap"

// stepEnd is the one kind of event the queue holds: an instance's step finishing. Arrivals
// are not queued: the trace is read one row ahead and compared with the queue's head.
type stepEnd struct {
	at       float64
	instance int
	// xfer, when set, makes the event a KV transfer landing on instance (disagg.go).
	xfer *pdReq
}

// eventQueue orders step ends by time, then by instance index, so ties resolve the same
// way in every run.
type eventQueue []stepEnd

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	if q[i].instance != q[j].instance {
		return q[i].instance < q[j].instance
	}
	// A step end goes before a transfer landing at the same time; transfers by request.
	if (q[i].xfer == nil) != (q[j].xfer == nil) {
		return q[i].xfer == nil
	}
	return q[i].xfer != nil && q[i].xfer.req.ID < q[j].xfer.req.ID
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(stepEnd)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

func (q *eventQueue) push(e stepEnd) { heap.Push(q, e) }
func (q *eventQueue) pop() stepEnd   { return heap.Pop(q).(stepEnd) }
func (q eventQueue) peek() stepEnd   { return q[0] }
