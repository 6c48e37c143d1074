//go:build cgo && !nocuda

package telemetry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Open loads the NVIDIA driver's NVML (libnvidia-ml.so.1), initialises it and starts a
// sampler over every GPU. Only for GPU paths: nvmlInit on a machine without a GPU but with
// the driver's libraries creates /dev/nvidia* nodes (as root), which CI must never do; tests
// use New with go-nvml's mock.
func Open(cfg Config) (*Sampler, error) {
	return New(nvml.New(), cfg)
}

// New initialises lib (nvml.New(), or a mock from go-nvml's pkg/nvml/mock in tests) and
// starts a sampler over every device it has. Close shuts lib down.
func New(lib nvml.Interface, cfg Config) (*Sampler, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvmlInit: %v", ret)
	}
	r, err := newNVMLReader(lib)
	if err != nil {
		lib.Shutdown()
		return nil, err
	}
	s, err := start(r, cfg)
	if err != nil {
		lib.Shutdown()
		return nil, err
	}
	return s, nil
}

type nvmlReader struct {
	lib     nvml.Interface
	handles []nvml.Device
	devs    []Device
	driver  string
}

func newNVMLReader(lib nvml.Interface) (*nvmlReader, error) {
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvmlDeviceGetCount: %v", ret)
	}
	r := &nvmlReader{lib: lib}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		r.driver = v
	}
	for i := range n {
		h, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvmlDeviceGetHandleByIndex(%d): %v", i, ret)
		}
		d := Device{Index: i}
		if v, ret := h.GetUUID(); ret == nvml.SUCCESS {
			d.UUID = v
		}
		if v, ret := h.GetName(); ret == nvml.SUCCESS {
			d.Name = v
		}
		if p, ret := h.GetPciInfo(); ret == nvml.SUCCESS {
			d.PCIBusID = cString(p.BusId[:])
		}
		if m, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
			d.MemoryTotalMiB = mib(m.Total)
		}
		r.handles = append(r.handles, h)
		r.devs = append(r.devs, d)
	}
	return r, nil
}

func (r *nvmlReader) devices() []Device     { return r.devs }
func (r *nvmlReader) driverVersion() string { return r.driver }

func (r *nvmlReader) close() error {
	if ret := r.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvmlShutdown: %v", ret)
	}
	return nil
}

func (r *nvmlReader) read() []Reading {
	out := make([]Reading, len(r.handles))
	for i, h := range r.handles {
		readDevice(h, &out[i])
	}
	return out
}

// bytesPerMiB converts NVML's bytes to DCGM's MiB.
const bytesPerMiB = 1 << 20

func mib(b uint64) float64 { return float64(b / bytesPerMiB) }

// readDevice fills one device's reading; a call that fails leaves its fields out.
func readDevice(h nvml.Device, r *Reading) {
	if v, ret := h.GetClockInfo(nvml.CLOCK_SM); ret == nvml.SUCCESS {
		r.set(SMClock, float64(v))
	}
	if v, ret := h.GetClockInfo(nvml.CLOCK_MEM); ret == nvml.SUCCESS {
		r.set(MemClock, float64(v))
	}
	// NVML has the memory (HBM) temperature only as a field value.
	fv := []nvml.FieldValue{{FieldId: nvml.FI_DEV_MEMORY_TEMP}}
	if ret := h.GetFieldValues(fv); ret == nvml.SUCCESS && nvml.Return(fv[0].NvmlReturn) == nvml.SUCCESS {
		if v, err := fieldValue(fv[0]); err == nil {
			r.set(MemoryTemp, v)
		}
	}
	if v, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		r.set(GPUTemp, float64(v))
	}
	if v, ret := h.GetPowerUsage(); ret == nvml.SUCCESS {
		r.set(PowerUsage, float64(v)/1000) // mW to W
	}
	if v, ret := h.GetTotalEnergyConsumption(); ret == nvml.SUCCESS {
		r.set(TotalEnergy, float64(v)) // mJ
	}
	if v, ret := h.GetPcieReplayCounter(); ret == nvml.SUCCESS {
		r.set(PCIeReplayCounter, float64(v))
	}
	if u, ret := h.GetUtilizationRates(); ret == nvml.SUCCESS {
		r.set(GPUUtil, float64(u.Gpu))
		r.set(MemCopyUtil, float64(u.Memory))
	}
	if v, _, ret := h.GetEncoderUtilization(); ret == nvml.SUCCESS {
		r.set(EncUtil, float64(v))
	}
	if v, _, ret := h.GetDecoderUtilization(); ret == nvml.SUCCESS {
		r.set(DecUtil, float64(v))
	}
	// Version 2 splits out the memory the driver reserves; older drivers have only version 1.
	if m, ret := h.GetMemoryInfo_v2(); ret == nvml.SUCCESS {
		r.set(FBFree, mib(m.Free))
		r.set(FBUsed, mib(m.Used))
		r.set(FBReserved, mib(m.Reserved))
		r.set(FBTotal, mib(m.Total))
	} else if m, ret := h.GetMemoryInfo(); ret == nvml.SUCCESS {
		r.set(FBFree, mib(m.Free))
		r.set(FBUsed, mib(m.Used))
		r.set(FBTotal, mib(m.Total))
	}
	if corr, unc, _, failed, ret := h.GetRemappedRows(); ret == nvml.SUCCESS {
		r.set(CorrectableRemapped, float64(corr))
		r.set(UncorrectableRemapped, float64(unc))
		r.set(RowRemapFailure, b2f(failed))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// fieldValue decodes an nvmlFieldValue_t's value union (little-endian, as NVML's hosts are).
func fieldValue(fv nvml.FieldValue) (float64, error) {
	v := fv.Value[:]
	switch nvml.ValueType(fv.ValueType) {
	case nvml.VALUE_TYPE_DOUBLE:
		return math.Float64frombits(binary.LittleEndian.Uint64(v)), nil
	case nvml.VALUE_TYPE_UNSIGNED_INT:
		return float64(binary.LittleEndian.Uint32(v)), nil
	case nvml.VALUE_TYPE_UNSIGNED_LONG, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG:
		return float64(binary.LittleEndian.Uint64(v)), nil
	case nvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return float64(int64(binary.LittleEndian.Uint64(v))), nil
	case nvml.VALUE_TYPE_SIGNED_INT:
		return float64(int32(binary.LittleEndian.Uint32(v))), nil
	case nvml.VALUE_TYPE_UNSIGNED_SHORT:
		return float64(binary.LittleEndian.Uint16(v)), nil
	}
	return 0, errors.New("unknown NVML value type")
}

// cString is a NUL-terminated C char array as a Go string.
func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}
