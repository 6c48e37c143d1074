package serving

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ChatMessageText reads an OpenAI chat message's content as the engine renders it into
// the chat template: null (empty), a string, or a list of {"type": "text", "text": ...}
// parts, concatenated. The engine's /v1/chat/completions and the router's prompt hashing
// both read messages with it, so the router hashes the prompt the engine runs.
func ChatMessageText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("expected a string or a list of content parts")
	}
	var out strings.Builder
	for i, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return "", fmt.Errorf("part %d: only {\"type\": \"text\", \"text\": ...} parts are supported, got type %q", i, p.Type)
		}
		out.WriteString(*p.Text)
	}
	return out.String(), nil
}
