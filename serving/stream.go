package serving

import "bytes"

// StreamChunk is what servelab reads of an OpenAI streamed chunk (a completion's or a chat
// completion's server-sent event): servelab bench times tokens by it and the router's SLO
// meter counts them by it, so the two worlds' TTFT of one stream is measured by one rule.
type StreamChunk struct {
	Choices []struct {
		Text  string `json:"text"`
		Delta *struct {
			Content string `json:"content"`
		} `json:"delta"`
		// TokenIDs: vLLM's return_token_ids streams each token with its id, even while
		// its text is held back.
		TokenIDs []int32 `json:"token_ids"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens        int `json:"prompt_tokens"`
		CompletionTokens    int `json:"completion_tokens"`
		PromptTokensDetails *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// CarriesToken reports whether the chunk's choice has text, token ids or chat content: a
// chat stream's opening chunk (its role) and the held-back and finishing chunks with empty
// text carry none.
func (c *StreamChunk) CarriesToken() bool {
	if len(c.Choices) == 0 {
		return false
	}
	ch := &c.Choices[0]
	return ch.Text != "" || len(ch.TokenIDs) > 0 || (ch.Delta != nil && ch.Delta.Content != "")
}

// SSEData is the data of a server-sent event line ("data: ..."), trimmed, and whether the
// line is one; done reports the stream's end, "data: [DONE]".
func SSEData(line []byte) (data []byte, done, ok bool) {
	data, ok = bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return nil, false, false
	}
	data = bytes.TrimSpace(data)
	return data, string(data) == "[DONE]", true
}
