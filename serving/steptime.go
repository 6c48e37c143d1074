package serving

// StepTimeModel gives the wall-clock seconds of one engine step of a given shape. It is the
// one interface through which a routing policy that predicts latency reads an engine's
// speed, so the same policy code runs in both worlds: the simulator passes its latency model
// (sim/latency: roofline, or linear fitted to a profile of the real engine), the real router
// the linear model of a profile `servelab profile` wrote (servelab router --latency-profile).
type StepTimeModel interface {
	StepTime(s StepShape) float64
}
