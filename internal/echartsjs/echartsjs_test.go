package echartsjs

import (
	"bytes"
	sha "crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestScriptIsTheVendoredBundle(t *testing.T) {
	js := Script()
	sum := sha.Sum256(js)
	if got := hex.EncodeToString(sum[:]); got != sha256 {
		t.Fatalf("echarts.min.js sha256 %s, want %s", got, sha256)
	}
	if !bytes.Contains(js, []byte("echarts")) || len(js) < 500_000 {
		t.Fatalf("%d bytes that do not look like ECharts", len(js))
	}
}
