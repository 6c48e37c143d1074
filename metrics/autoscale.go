package metrics

// Autoscale summarises an autoscaled cluster's size over a run.
type Autoscale struct {
	// Policy is the scaling policy's resolved spec (policies/scale).
	Policy string `json:"policy"`
	// MinReplicas and MaxReplicas are the policy's bounds.
	MinReplicas int `json:"min_replicas"`
	MaxReplicas int `json:"max_replicas"`
	// ScaleUpDelayS is the seconds a started instance took to become routable.
	ScaleUpDelayS float64 `json:"scale_up_delay_s"`
	// InstanceHours is the started instances (starting, ready or draining) integrated over
	// the run; MeanInstances is it over the run's duration, MaxInstances the most at once.
	InstanceHours float64 `json:"instance_hours"`
	MeanInstances float64 `json:"mean_instances"`
	MaxInstances  int     `json:"max_instances"`
	// ScaleUps and ScaleDowns count instances started, and drained or cancelled.
	ScaleUps   int `json:"scale_ups"`
	ScaleDowns int `json:"scale_downs"`
}
