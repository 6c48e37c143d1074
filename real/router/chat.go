package router

import (
	"context"
	"encoding/json"

	"servelab/serving"
)

// ChatMessage is one chat turn as Config.EncodeChat receives it: the role and the content
// text (serving.ChatMessageText, as the engine reads it).
type ChatMessage struct{ Role, Content string }

// wireMessage is a /v1/chat/completions message as the request body carries it.
type wireMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// chatRequest is the policy's view of a chat request whose prompt the engines' chat
// template renders (Config.EncodeChat): the block hashes of the rendered, tokenized
// conversation, equal to the engine's, so the precise prefix scorer matches chat prompts
// against KV events as it does completions. nil when there is no EncodeChat or the
// messages are ones the engine refuses (it answers 400; the caller routes them anyway).
func (r *Router) chatRequest(ctx context.Context, msgs []wireMessage, priority int) *serving.Request {
	if r.cfg.EncodeChat == nil || len(msgs) == 0 {
		return nil
	}
	conv := make([]ChatMessage, len(msgs))
	for i, m := range msgs {
		text, err := serving.ChatMessageText(m.Content)
		if err != nil {
			return nil
		}
		conv[i] = ChatMessage{Role: m.Role, Content: text}
	}
	ids := r.cfg.EncodeChat(ctx, conv)
	if ids == nil {
		return nil
	}
	return &serving.Request{ID: r.nextID.Add(1), Priority: priority, PromptTokens: len(ids),
		BlockHashes: serving.TokenBlockHashes(ids, r.cfg.BlockSize)}
}

// BlockHashes returns the block hashes the router computes for a request body sent to
// path (/v1/completions or /v1/chat/completions): what its prefix-aware policies and the
// precise prefix scorer match against the endpoints' KV events.
func (r *Router) BlockHashes(ctx context.Context, path string, body []byte) []uint64 {
	return r.routingRequest(ctx, path, body).BlockHashes
}
