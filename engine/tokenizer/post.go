package tokenizer

import (
	"strings"
)

// postProcessor adds special tokens around an encoded sequence (HF "post_processor";
// only the single-sequence template matters here).
type postProcessor interface {
	process(ids []int32) []int32
}

// postTemplate is TemplateProcessing's "single" template: special tokens and $A.
type postTemplate struct {
	items []postItem
}

type postItem struct {
	seq bool    // the sequence itself
	ids []int32 // else these special token ids
}

func (p postTemplate) process(ids []int32) []int32 {
	n := len(ids)
	for _, it := range p.items {
		n += len(it.ids)
	}
	out := make([]int32, 0, n)
	for _, it := range p.items {
		if it.seq {
			out = append(out, ids...)
		} else {
			out = append(out, it.ids...)
		}
	}
	return out
}

// postNone is a post-processor that adds nothing (ByteLevel: it only trims offsets).
type postNone struct{}

func (postNone) process(ids []int32) []int32 { return ids }

type postSequence []postProcessor

func (q postSequence) process(ids []int32) []int32 {
	for _, p := range q {
		ids = p.process(ids)
	}
	return ids
}

func parsePostProcessor(v jval) (postProcessor, error) {
	o, typ, err := component(v)
	if err != nil || typ == "" {
		return nil, err
	}
	switch typ {
	case "Sequence":
		seq, err := parseSequence(o, "processors", parsePostProcessor)
		return postSequence(seq), err
	case "ByteLevel":
		return postNone{}, nil
	case "TemplateProcessing":
		return parseTemplate(o)
	case "BertProcessing", "RobertaProcessing":
		var items []postItem
		for _, k := range []string{"cls", "sep"} {
			pair, err := o.get(k).array()
			if err != nil {
				return nil, err
			}
			if len(pair) != 2 {
				return nil, o.get(k).errf("want [token, id]")
			}
			id, err := pair[1].integer()
			if err != nil {
				return nil, err
			}
			if id < 0 || id > 1<<31-1 {
				return nil, pair[1].errf("id %d out of range", id)
			}
			items = append(items, postItem{ids: []int32{int32(id)}})
			if k == "cls" {
				items = append(items, postItem{seq: true})
			}
		}
		return postTemplate{items: items}, nil
	}
	return nil, o.get("type").errf("unsupported post_processor %q (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence)", typ)
}

func parseTemplate(o jobj) (postProcessor, error) {
	specials := map[string][]int32{}
	if st := o.get("special_tokens"); !st.missing() {
		so, err := st.object()
		if err != nil {
			return nil, err
		}
		for name := range so.m {
			e, err := so.get(name).object()
			if err != nil {
				return nil, err
			}
			list, err := e.get("ids").array()
			if err != nil {
				return nil, err
			}
			ids := make([]int32, len(list))
			for i, x := range list {
				n, err := x.integer()
				if err != nil {
					return nil, err
				}
				if n < 0 || n > 1<<31-1 {
					return nil, x.errf("id %d out of range", n)
				}
				ids[i] = int32(n)
			}
			specials[name] = ids
		}
	}
	single := o.get("single")
	list, err := single.array()
	if err != nil {
		return nil, err
	}
	var p postTemplate
	for _, it := range list {
		var name string
		var seq bool
		if s, err := it.str(); err == nil {
			// The compact form: "$A", "$A:0", "<s>", "<s>:1".
			if i := strings.LastIndexByte(s, ':'); i > 0 && strings.Trim(s[i+1:], "0123456789") == "" && i < len(s)-1 {
				s = s[:i]
			}
			if strings.HasPrefix(s, "$") {
				if s != "$" && s != "$A" && s != "$0" {
					continue // $B is the pair's second sequence
				}
				seq = true
			} else {
				name = s
			}
		} else {
			io, err := it.object()
			if err != nil {
				return nil, it.errf("want {\"SpecialToken\": ...} or {\"Sequence\": ...}")
			}
			switch {
			case io.has("Sequence"):
				so, err := io.get("Sequence").object()
				if err != nil {
					return nil, err
				}
				id, err := so.str("id", "A")
				if err != nil {
					return nil, err
				}
				if id != "A" {
					continue
				}
				seq = true
			case io.has("SpecialToken"):
				so, err := io.get("SpecialToken").object()
				if err != nil {
					return nil, err
				}
				if name, err = so.get("id").str(); err != nil {
					return nil, err
				}
			default:
				return nil, it.errf("want {\"SpecialToken\": ...} or {\"Sequence\": ...}")
			}
		}
		if seq {
			p.items = append(p.items, postItem{seq: true})
			continue
		}
		ids, ok := specials[name]
		if !ok {
			return nil, it.errf("special token %q is not in special_tokens", name)
		}
		p.items = append(p.items, postItem{ids: ids})
	}
	return p, nil
}
