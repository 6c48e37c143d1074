package tokenizer

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/exec"
)

// Message is one chat turn.
type Message struct{ Role, Content string }

// HasChatTemplate reports whether tokenizer_config.json carries a chat template.
func (t *Tokenizer) HasChatTemplate() bool { return t.chatTemplate != "" }

// ApplyChatTemplate renders messages with the model's Jinja chat template (gonja), giving
// it messages, add_generation_prompt, bos_token, eos_token and raise_exception as
// transformers does. Without a template it uses a plain documented fallback: one
// "role: content" line per message, then "assistant:" when a generation prompt is asked.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chatTemplate == "" {
		var b strings.Builder
		for _, m := range msgs {
			fmt.Fprintf(&b, "%s: %s\n", m.Role, m.Content)
		}
		if addGenerationPrompt {
			b.WriteString("assistant:")
		}
		return b.String(), nil
	}
	tpl, err := gonja.FromString(t.chatTemplate)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	list := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		list[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	name := func(id int32) string {
		if id < 0 || int(id) >= len(t.tokens) {
			return ""
		}
		return t.tokens[id]
	}
	var raised error
	out, err := tpl.ExecuteToString(exec.NewContext(map[string]any{
		"messages":              list,
		"add_generation_prompt": addGenerationPrompt,
		"bos_token":             name(t.bos),
		"eos_token":             name(t.eos),
		"raise_exception": func(msg string) (string, error) {
			raised = errors.New(msg)
			return "", raised
		},
	}))
	if raised != nil {
		return "", fmt.Errorf("chat template: %w", raised)
	}
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	return out, nil
}
