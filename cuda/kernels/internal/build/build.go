// Package build compiles kernels.cu with NVRTC into the files cuda/kernels embeds: the
// sm_90 cubin, the compute_80 PTX and the per-kernel resource report ptxas gives for the
// cubin. gen/main.go (go generate) writes them; cuda/kernels' tests rebuild them and
// compare byte for byte, and read the report's numbers against their budgets.
package build

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"servelab/cuda/nvrtc"
)

// The generated files, in cuda/kernels.
const (
	Source        = "kernels.cu"
	CubinFile     = "kernels_sm90.cubin"
	PTXFile       = "kernels.ptx"
	ResourcesFile = "kernels_sm90.resources.txt"
)

// The compilations' options, fixed so that a build is reproducible: the cubin for the
// H100/H200 (sm_90) with ptxas's resource report, and PTX for compute_80, which the
// driver JIT-compiles on A100, L4, H100 and newer. No fast-math options.
var (
	CubinOptions = []string{"--gpu-architecture=sm_90", "--ptxas-options=-v"}
	PTXOptions   = []string{"--gpu-architecture=compute_80"}
)

// Files compiles src (kernels.cu's text) and returns the generated files by name.
func Files(n *nvrtc.NVRTC, src string) (map[string][]byte, error) {
	cub, err := n.Compile(src, Source, CubinOptions, true)
	if err != nil {
		return nil, err
	}
	ptx, err := n.Compile(src, Source, PTXOptions, false)
	if err != nil {
		return nil, err
	}
	res, err := ParseLog(cub.Log)
	if err != nil {
		return nil, err
	}
	major, minor, err := n.Version()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# ptxas resource usage of %s's kernels (NVRTC %d.%d, %s), written by go generate ./cuda/kernels\n",
		Source, major, minor, strings.Join(CubinOptions, " "))
	b.Write(FormatResources(res))
	return map[string][]byte{
		CubinFile:     cub.CUBIN,
		PTXFile:       append(ptx.PTX, '\n'),
		ResourcesFile: b.Bytes(),
	}, nil
}

// Resources is one kernel's resource usage as ptxas reports it with -v.
type Resources struct {
	Kernel      string
	Registers   int // per thread
	StackBytes  int // stack frame per thread
	SpillStores int // bytes
	SpillLoads  int // bytes
	SharedBytes int // static shared memory per block
}

var (
	entryRe = regexp.MustCompile(`Compiling entry function '([^']+)'`)
	frameRe = regexp.MustCompile(`(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads`)
	usedRe  = regexp.MustCompile(`Used (\d+) registers`)
	smemRe  = regexp.MustCompile(`(\d+) bytes smem`)
)

// ParseLog reads ptxas's -v report from an NVRTC log: for each "Compiling entry
// function" its stack/spill line and its "Used N registers[, M bytes smem]" line.
func ParseLog(log string) ([]Resources, error) {
	var out []Resources
	var cur *Resources
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		if m := entryRe.FindStringSubmatch(line); m != nil {
			out = append(out, Resources{Kernel: m[1], Registers: -1})
			cur = &out[len(out)-1]
			continue
		}
		if cur == nil {
			continue
		}
		if m := frameRe.FindStringSubmatch(line); m != nil {
			cur.StackBytes, _ = strconv.Atoi(m[1])
			cur.SpillStores, _ = strconv.Atoi(m[2])
			cur.SpillLoads, _ = strconv.Atoi(m[3])
		}
		if m := usedRe.FindStringSubmatch(line); m != nil {
			cur.Registers, _ = strconv.Atoi(m[1])
			if s := smemRe.FindStringSubmatch(line); s != nil {
				cur.SharedBytes, _ = strconv.Atoi(s[1])
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("build: no \"Compiling entry function\" in the ptxas log (was --ptxas-options=-v given?):\n%s", log)
	}
	for _, r := range out {
		if r.Registers < 0 {
			return nil, fmt.Errorf("build: ptxas log has no register count for %s", r.Kernel)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kernel < out[j].Kernel })
	return out, nil
}

const header = "kernel\tregisters\tstack_bytes\tspill_store_bytes\tspill_load_bytes\tshared_bytes"

// FormatResources writes rs as a tab-separated table with a header line.
func FormatResources(rs []Resources) []byte {
	var b bytes.Buffer
	b.WriteString(header + "\n")
	for _, r := range rs {
		fmt.Fprintf(&b, "%s\t%d\t%d\t%d\t%d\t%d\n", r.Kernel, r.Registers, r.StackBytes, r.SpillStores, r.SpillLoads, r.SharedBytes)
	}
	return b.Bytes()
}

// ParseResources reads FormatResources' table (lines starting with # are comments).
func ParseResources(b []byte) ([]Resources, error) {
	var out []Resources
	sawHeader := false
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !sawHeader {
			if line != header {
				return nil, fmt.Errorf("%s line %d: want the header %q, got %q", ResourcesFile, i+1, header, line)
			}
			sawHeader = true
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 6 {
			return nil, fmt.Errorf("%s line %d: want 6 tab-separated fields, got %d", ResourcesFile, i+1, len(f))
		}
		r := Resources{Kernel: f[0]}
		for j, p := range []*int{&r.Registers, &r.StackBytes, &r.SpillStores, &r.SpillLoads, &r.SharedBytes} {
			v, err := strconv.Atoi(f[j+1])
			if err != nil {
				return nil, fmt.Errorf("%s line %d field %d: %v", ResourcesFile, i+1, j+2, err)
			}
			*p = v
		}
		out = append(out, r)
	}
	if !sawHeader {
		return nil, fmt.Errorf("%s: no header line", ResourcesFile)
	}
	return out, nil
}
