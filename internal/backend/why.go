package backend

// Availability tells, for each known backend (Names), why this machine
// cannot run it, or nil where it can: what auto mode would find. genidctl
// doctor says it beside what the daemon runs.
func Availability(opts Options) map[string]error {
	opts.setDefaults()
	return map[string]error{
		NameVMGenID: detectVMGenID(opts),
		NameVMClock: detectVMClock(opts),
	}
}
