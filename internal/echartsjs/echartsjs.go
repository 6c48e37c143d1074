// Package echartsjs embeds Apache ECharts' browser bundle, so the HTML reports and the
// dashboard are self-contained: no page loads JavaScript from a CDN.
package echartsjs

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"io"
	"sync"
)

// Version is the npm package echarts' version the bundle comes from.
const Version = "5.6.0"

// sha256 is the digest of the unpacked echarts.min.js, checked by the tests.
const sha256 = "bf4a223524e40b77c304bec67e1222cf551f14880cf42c69dc046558e11c07b1"

//go:embed echarts.min.js.gz
var gz []byte

var unpacked = sync.OnceValue(func() []byte {
	r, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		panic("echartsjs: the embedded bundle is corrupt: " + err.Error())
	}
	js, err := io.ReadAll(r)
	if err != nil {
		panic("echartsjs: the embedded bundle is corrupt: " + err.Error())
	}
	return js
})

// Script returns echarts.min.js. The slice is shared: do not modify it.
func Script() []byte { return unpacked() }
