package core

import "servelab/serving"

// seqQueue is the waiting queue: FIFO with a cheap push to the front for preempted
// sequences, and a contiguous view for batch policies. The live part is buf[head:].
type seqQueue struct {
	buf  []*serving.Seq
	head int
}

func (q *seqQueue) items() []*serving.Seq { return q.buf[q.head:] }

func (q *seqQueue) len() int { return len(q.buf) - q.head }

func (q *seqQueue) pushBack(s *serving.Seq) {
	if q.head > 0 && q.head >= len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf = q.buf[:n]
		q.head = 0
	}
	q.buf = append(q.buf, s)
}

func (q *seqQueue) pushFront(s *serving.Seq) {
	if q.head == 0 {
		// Leave room in front so a run of preemptions does not copy every time.
		gap := max(8, q.len()/4)
		grown := make([]*serving.Seq, gap+q.len(), gap+q.len()+cap(q.buf)/4+1)
		copy(grown[gap:], q.buf)
		q.buf, q.head = grown, gap
	}
	q.head--
	q.buf[q.head] = s
}

// remove takes the i-th live item out, keeping the order of the rest.
func (q *seqQueue) remove(i int) {
	if i == 0 {
		q.buf[q.head] = nil
		q.head++
		if q.head == len(q.buf) {
			q.buf, q.head = q.buf[:0], 0
		}
		return
	}
	at := q.head + i
	copy(q.buf[at:], q.buf[at+1:])
	q.buf[len(q.buf)-1] = nil
	q.buf = q.buf[:len(q.buf)-1]
}

// index finds s in the live items; the head is the usual answer.
func (q *seqQueue) index(s *serving.Seq) int {
	for i, x := range q.items() {
		if x == s {
			return i
		}
	}
	return -1
}
