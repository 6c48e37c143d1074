// Package policies holds what the three kinds of policy share: the spec syntax a policy is
// chosen by ("name:key=value,key=value" or YAML), typed parameters, and a registry that
// builds a policy from its spec and lists every policy with its parameters for --help.
//
// The policies themselves live in route, batch and evict. They are pure: no I/O, no clocks,
// no goroutines, so the simulator and the real engine and router run the same code.
package policies
