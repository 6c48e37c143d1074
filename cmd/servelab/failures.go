package main

import (
	"fmt"
	"io"
	"strings"

	"servelab/metrics"
)

// reportFailures tells why requests failed: each kind with its count and first error
// message, the most frequent first, then a hint per kind that has one.
func reportFailures(w io.Writer, f metrics.Failures, requests int, hint func(kind, first string) string) {
	if f.Total() == 0 {
		return
	}
	fmt.Fprintf(w, "%d of %d requests failed:\n", f.Total(), requests)
	var hints []string
	for _, k := range f.Kinds() {
		c := f[k]
		fmt.Fprintf(w, "  %6d  %s, the first: %s\n", c.Count, k, firstLine(c.FirstError, 300))
		if h := hint(k, c.FirstError); h != "" && !contains(hints, h) {
			hints = append(hints, h)
		}
	}
	for _, h := range hints {
		fmt.Fprintf(w, "hint: %s\n", h)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// firstLine is s up to its first newline, cut to n bytes.
func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// contextHint is the advice for requests longer than the model's context.
const contextHint = "prompts plus outputs exceed the model's context: --token-scale auto (or a factor below 1) shrinks the trace's token counts, --max-model-len N clips each request to N tokens"

// benchHint advises on a failure kind of a real run.
func benchHint(kind, first string) string {
	switch {
	case strings.Contains(first, "maximum context length"), strings.Contains(first, "max_model_len"):
		return contextHint
	case kind == "connection refused":
		return "nothing listens at --endpoint: is the server running, and on that port?"
	case kind == "HTTP 401", kind == "HTTP 403":
		return "the server wants a key: --api-key KEY"
	case kind == "HTTP 404":
		return "--endpoint is the server's base URL, without /v1"
	case kind == "HTTP 429":
		return "the server's queue is full: lower --rate-scale or replay closed loop with --concurrency N"
	case kind == "row too large":
		return "the trace has rows beyond any model's context: check the file, or --token-scale"
	}
	return ""
}

// simHint advises on a failure kind of a simulated run.
func simHint(kind, _ string) string {
	switch kind {
	case "context exceeds max_model_len":
		return "prompts plus outputs exceed max_model_len: --token-scale auto scales the trace's token counts to the context and clips the rest (or give a factor below 1), or raise --max-model-len"
	case "context exceeds KV cache":
		return "an instance's KV cache cannot hold the request: --token-scale shrinks the trace's token counts, --num-gpu-blocks-override or --gpu-memory-utilization gives more blocks"
	}
	return ""
}
