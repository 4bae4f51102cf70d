package server

import (
	"errors"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/genid-project/genid/genid"
	"github.com/genid-project/genid/internal/page"
	"github.com/genid-project/genid/internal/scope"
)

// pages are the two files a scope's generation is published in, side by
// side in its directory: the generation page (a u32 at offset 0, the
// sysgenid layout, /dev/sysgenid in a container) and the VMClock page
// (struct vmclock_abi, /dev/vmclock0 in a container).
type pages struct {
	gen   *page.Writer
	clock *page.VMClock
}

// openPages opens (creating them if missing) the pages of the scope whose
// directory dir is open as dirfd, and brings them to the generation the
// scope resumes from: the higher of the two, so that one of them removed or
// cut short while no daemon ran does not take the scope backwards.
func openPages(dirfd int, dir string) (*pages, error) {
	gen, err := page.CreateAt(dirfd, genid.PageFile, filepath.Join(dir, genid.PageFile))
	if err != nil {
		return nil, err
	}
	clock, err := page.CreateVMClockAt(dirfd, page.VMClockFile, filepath.Join(dir, page.VMClockFile))
	if err != nil {
		gen.Close()
		return nil, err
	}
	p := &pages{gen: gen, clock: clock}
	g := gen.Load()
	// A counter above what a generation can be is not one genid wrote.
	if c := clock.Load(); c <= scope.Max {
		g = max(g, uint32(c))
	}
	if gen.Load() != g {
		gen.Store(g)
	}
	if clock.Load() != uint64(g) {
		clock.Store(g)
	}
	return p, nil
}

// Load returns the generation the pages hold.
func (p *pages) Load() uint32 { return p.gen.Load() }

// Store publishes gen in both pages, the generation page first.
func (p *pages) Store(gen uint32) {
	p.gen.Store(gen)
	p.clock.Store(gen)
}

// Close unmaps both pages; the files keep their values.
func (p *pages) Close() error {
	return errors.Join(p.gen.Close(), p.clock.Close())
}

// unlinkPages removes a scope's pages from its directory, open as dirfd.
func unlinkPages(dirfd int) {
	unix.Unlinkat(dirfd, genid.PageFile, 0)
	unix.Unlinkat(dirfd, page.VMClockFile, 0)
}
