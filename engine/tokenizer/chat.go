package tokenizer

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
)

// Message is one chat turn.
type Message struct{ Role, Content string }

// HasChatTemplate reports whether tokenizer_config.json carries a chat template.
func (t *Tokenizer) HasChatTemplate() bool { return t.chatTemplate != "" }

// ChatTemplate returns the Jinja source of the chat template ("" when there is none).
func (t *Tokenizer) ChatTemplate() string { return t.chatTemplate }

// ApplyChatTemplate renders msgs with the model's Jinja chat template, as transformers'
// apply_chat_template does: trim_blocks and lstrip_blocks on, and the variables
// messages (a list of {"role", "content"}), add_generation_prompt, bos_token,
// eos_token, unk_token, pad_token, and the functions raise_exception(msg) (which fails
// the rendering with msg) and strftime_now(format).
//
// Without a chat_template in tokenizer_config.json it uses a plain fallback: one line
// "<role>: <content>\n" per message, then "assistant:" when addGenerationPrompt is set.
func (t *Tokenizer) ApplyChatTemplate(msgs []Message, addGenerationPrompt bool) (string, error) {
	if t.chatTemplate == "" {
		var b strings.Builder
		for _, m := range msgs {
			b.WriteString(m.Role)
			b.WriteString(": ")
			b.WriteString(m.Content)
			b.WriteString("\n")
		}
		if addGenerationPrompt {
			b.WriteString("assistant:")
		}
		return b.String(), nil
	}
	return renderTemplate(t.chatTemplate, msgs, map[string]any{
		"add_generation_prompt": addGenerationPrompt,
		"bos_token":             t.bosToken,
		"eos_token":             t.eosToken,
		"unk_token":             t.unkToken,
		"pad_token":             t.padToken,
	})
}

// raised is the error raise_exception reports.
type raised struct{ msg string }

func (r *raised) Error() string { return r.msg }

func renderTemplate(src string, msgs []Message, vars map[string]any) (out string, err error) {
	defer func() {
		// A template from a model directory must not bring the process down.
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("chat template: %v", r)
		}
	}()
	cfg := config.New()
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	tpl, err := exec.NewTemplate(templateName, cfg, templateLoader(src), gonja.DefaultEnvironment)
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	list := make([]map[string]any, len(msgs))
	for i, m := range msgs {
		list[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	var raisedErr *raised
	data := map[string]any{
		"messages": list,
		"raise_exception": func(msg string) (string, error) {
			raisedErr = &raised{msg}
			return "", raisedErr
		},
		"strftime_now": func(format string) string { return strftime(time.Now(), format) },
	}
	for k, v := range vars {
		data[k] = v
	}
	out, err = tpl.ExecuteToString(exec.NewContext(data))
	if raisedErr != nil {
		return "", fmt.Errorf("chat template: %w", raisedErr)
	}
	if err != nil {
		return "", fmt.Errorf("chat template: %w", err)
	}
	return out, nil
}

const templateName = "chat_template"

// templateLoader serves the chat template and nothing else: a template from a model
// directory cannot include or import files.
type templateLoader string

func (l templateLoader) Read(path string) (io.Reader, error) {
	if path != templateName {
		return nil, errors.New("chat templates cannot include other templates")
	}
	return strings.NewReader(string(l)), nil
}

func (l templateLoader) Resolve(path string) (string, error) { return path, nil }

func (l templateLoader) Inherit(string) (loaders.Loader, error) { return l, nil }

// strftime formats t with the C strftime directives chat templates use.
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			b.WriteByte(c)
			continue
		}
		i++
		switch format[i] {
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}
