package serving

// A/B arms. When a router splits traffic between two routing policies (route.AB), each
// request is in arm ArmA (the policy of --router) or ArmB (the policy of --ab-router);
// Request.Arm and Record.Arm carry it, and reports summarise each arm apart.
const (
	ArmA = "a"
	ArmB = "b"
)

// ArmHeader names the A/B arm of a request. On a request to servelab's router it chooses
// the arm (a or b), overriding the fractional split, as Envoy's and Istio's header-based
// canary routes let a client pin a version; on the router's response it says which arm
// routed the request, so a load generator (servelab bench) attributes each request to
// its arm. No Gateway API Inference Extension or llm-d name exists for it.
const ArmHeader = "x-servelab-arm"
