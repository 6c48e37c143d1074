// Package serving holds the types that both worlds share: a Request as it enters the
// cluster, the Seq an engine keeps for it, the Step one engine iteration runs, the
// InstanceView a router sees, and the Record a finished request leaves behind.
//
// It imports nothing of the project, so policies, the engine core, the simulator and the
// real path can all depend on it without cycles. Nothing here does I/O or reads a clock.
package serving
