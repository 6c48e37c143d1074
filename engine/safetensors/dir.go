package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// SingleFileName and IndexFileName are the file names Hugging Face uses for an unsharded
// checkpoint and for the index of a sharded one.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// Set is the tensors of a model directory, from one file or from the shards of an index.
type Set struct {
	// Dir is the directory given to OpenDir.
	Dir string
	// Files are the files read, sorted by path.
	Files []*File
	// IndexMetadata is the index's "metadata" object (nil for an unsharded directory).
	IndexMetadata map[string]any
	tensors       map[string]*Tensor
	paths         map[string]string // tensor name -> file path
}

// index is model.safetensors.index.json.
type index struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

// OpenDir opens the safetensors checkpoint in dir: dir/model.safetensors when it exists (as
// transformers prefers it), otherwise dir/model.safetensors.index.json and the shards its
// weight_map names. Every weight_map entry must be present in the shard it names, shard names
// must be plain file names inside dir, and no tensor may appear in two shards. Tensors of a
// listed shard that the weight_map does not mention are included too.
func OpenDir(dir string) (*Set, error) {
	single := filepath.Join(dir, SingleFileName)
	if _, err := os.Stat(single); err == nil {
		f, err := Open(single)
		if err != nil {
			return nil, err
		}
		s := &Set{Dir: dir, Files: []*File{f}, tensors: f.Tensors, paths: map[string]string{}}
		for name := range f.Tensors {
			s.paths[name] = f.Path
		}
		return s, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	idxPath := filepath.Join(dir, IndexFileName)
	raw, err := os.ReadFile(idxPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("safetensors: %s has neither %s nor %s", dir, SingleFileName, IndexFileName)
		}
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	var idx index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, errorf(idxPath, "", "bad JSON index: %v", err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, errorf(idxPath, "", "weight_map is missing or empty")
	}
	shards := map[string]bool{}
	for name, shard := range idx.WeightMap {
		if shard == "" || shard == "." || shard == ".." || filepath.Base(shard) != shard || filepath.IsAbs(shard) {
			return nil, errorf(idxPath, name, "shard %q is not a plain file name in the directory", shard)
		}
		shards[shard] = true
	}
	shardNames := make([]string, 0, len(shards))
	for s := range shards {
		shardNames = append(shardNames, s)
	}
	sort.Strings(shardNames)

	s := &Set{Dir: dir, IndexMetadata: idx.Metadata, tensors: map[string]*Tensor{}, paths: map[string]string{}}
	owner := map[string]string{}
	byShard := map[string]*File{}
	for _, sh := range shardNames {
		f, err := Open(filepath.Join(dir, sh))
		if err != nil {
			return nil, err
		}
		byShard[sh] = f
		s.Files = append(s.Files, f)
		for name, t := range f.Tensors {
			if prev, dup := owner[name]; dup {
				return nil, errorf(idxPath, name, "is in both shard %s and shard %s", prev, sh)
			}
			owner[name] = sh
			s.tensors[name] = t
			s.paths[name] = f.Path
		}
	}
	mapped := make([]string, 0, len(idx.WeightMap))
	for name := range idx.WeightMap {
		mapped = append(mapped, name)
	}
	sort.Strings(mapped)
	for _, name := range mapped {
		sh := idx.WeightMap[name]
		if _, ok := byShard[sh].Tensors[name]; !ok {
			if other, elsewhere := owner[name]; elsewhere {
				return nil, errorf(idxPath, name, "weight_map says shard %s, but it is in shard %s", sh, other)
			}
			return nil, errorf(idxPath, name, "weight_map says shard %s, which has no such tensor", sh)
		}
	}
	return s, nil
}

// Tensor returns the named tensor.
func (s *Set) Tensor(name string) (*Tensor, bool) {
	t, ok := s.tensors[name]
	return t, ok
}

// Names returns all tensor names, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.tensors))
	for n := range s.tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Float32 returns the named tensor converted to float32 after checking that its shape is
// want. Errors name the file holding the tensor.
func (s *Set) Float32(name string, want []int) ([]float32, error) {
	t, ok := s.tensors[name]
	if !ok {
		return nil, errorf(s.Dir, name, "no such tensor")
	}
	if !slices.Equal(t.Shape, want) {
		return nil, errorf(s.paths[name], name, "has shape %v, want %v", t.Shape, want)
	}
	v, err := t.Float32()
	if e, ok := err.(*Error); ok {
		e.Path = s.paths[name]
	}
	return v, err
}
