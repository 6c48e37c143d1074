package policies

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Spec
		wantErr string
	}{
		{in: "lru", want: Spec{Name: "lru"}},
		{in: " weighted:prefix=3, queue=1,kv=1 ", want: Spec{Name: "weighted", Params: map[string]string{"prefix": "3", "queue": "1", "kv": "1"}}},
		{in: "vllm:", want: Spec{Name: "vllm"}},
		{in: "", wantErr: "missing policy name"},
		{in: ":a=1", wantErr: "missing policy name"},
		{in: "vllm:max_num_seqs", wantErr: `"max_num_seqs" is not key=value`},
		{in: "vllm:a=1,a=2", wantErr: `"a" given twice`},
	} {
		got, err := ParseSpec(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseSpec(%q) error %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("ParseSpec(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseYAMLSpec(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Spec
		wantErr bool
	}{
		{in: "weighted:prefix=3", want: Spec{Name: "weighted", Params: map[string]string{"prefix": "3"}}},
		{in: "name: vllm\nparams:\n  max_num_seqs: 64\n  chunked_prefill: false\n", want: Spec{Name: "vllm", Params: map[string]string{"max_num_seqs": "64", "chunked_prefill": "false"}}},
		{in: "name: lru\nparms: {}\n", wantErr: true},
		{in: "params: {a: 1}\n", wantErr: true},
	} {
		got, err := ParseYAMLSpec([]byte(tc.in))
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseYAMLSpec(%q) error %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if diff := cmp.Diff(tc.want, got); !tc.wantErr && diff != "" {
			t.Errorf("ParseYAMLSpec(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestSpecStringRoundTrips(t *testing.T) {
	spec := Spec{Name: "weighted", Params: map[string]string{"queue": "1", "prefix": "3"}}
	if got := spec.String(); got != "weighted:prefix=3,queue=1" {
		t.Errorf("String() = %q", got)
	}
	back, err := ParseSpec(spec.String())
	if err != nil || !cmp.Equal(spec, back) {
		t.Errorf("round trip gave %+v, %v", back, err)
	}
}

func TestParamsReportUnknownAndMalformed(t *testing.T) {
	p := NewParams(Spec{Name: "x", Params: map[string]string{"n": "4", "f": "nan?", "typo": "1"}})
	if got := p.Int("n", 1); got != 4 {
		t.Errorf("Int = %d", got)
	}
	p.Float("f", 0)
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), `"f"`) {
		t.Errorf("malformed float not reported: %v", err)
	}
	q := NewParams(Spec{Name: "x", Params: map[string]string{"typo": "1"}})
	q.Int("n", 1)
	if err := q.Err(); err == nil || !strings.Contains(err.Error(), "typo") {
		t.Errorf("unknown parameter not reported: %v", err)
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"lru", "weighted:prefix=3,queue=1", "a:b=c,d=", ":", "x:=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := ParseSpec(in)
		if err != nil {
			return
		}
		if spec.Name == "" {
			t.Fatalf("accepted %q with an empty name", in)
		}
		again, err := ParseSpec(spec.String())
		if err != nil {
			t.Fatalf("String() of an accepted spec does not parse: %q: %v", spec.String(), err)
		}
		if again.String() != spec.String() {
			t.Fatalf("round trip changed %q to %q", spec.String(), again.String())
		}
	})
}

func TestParamsResolvedListsEveryParameterRead(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec string
		want Spec
	}{
		{"defaults only", "p", Spec{Name: "p", Params: map[string]string{"f": "0.5", "i": "7", "b": "true", "s": "x"}}},
		{"given values, canonical form", "p:f=1e1,i=+3,b=1,s=y", Spec{Name: "p", Params: map[string]string{"f": "10", "i": "3", "b": "true", "s": "y"}}},
		{"mixed", "p:i=9", Spec{Name: "p", Params: map[string]string{"f": "0.5", "i": "9", "b": "true", "s": "x"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, err := ParseSpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			p := NewParams(spec)
			p.Float("f", 0.5)
			p.Int("i", 7)
			p.Bool("b", true)
			p.String("s", "x")
			if err := p.Err(); err != nil {
				t.Fatal(err)
			}
			got := p.Resolved()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Resolved() (-want +got):\n%s", diff)
			}
			// The resolved spec reads back as itself.
			again, err := ParseSpec(got.String())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, again); diff != "" {
				t.Errorf("Resolved().String() does not round-trip (-want +got):\n%s", diff)
			}
		})
	}
}
