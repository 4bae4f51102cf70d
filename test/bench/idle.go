package main

import (
	"time"
)

// memoryPerWatcher: a fresh daemon's RSS growth from 0 to n idle watchers,
// divided by n, in bytes.
func memoryPerWatcher(b *bench, n int) (float64, error) {
	d, err := startDaemon(b.genidctl)
	if err != nil {
		return 0, err
	}
	defer d.stop()
	// Warm up: whatever the first connections initialise is not per watcher.
	warm, err := d.watchers(10)
	if err != nil {
		return 0, err
	}
	closeAll(warm)
	time.Sleep(500 * time.Millisecond)
	before := d.rss()
	fds, err := d.watchers(n)
	if err != nil {
		return 0, err
	}
	defer closeAll(fds)
	time.Sleep(time.Second)
	after := d.rss()
	return float64(after-before) / float64(n), nil
}

// idleSwitches: context switches of every daemon thread over windows of
// length win, with n idle watchers connected.
func idleSwitches(b *bench, n, windows int, win time.Duration) ([]float64, int, error) {
	d, err := startDaemon(b.genidctl)
	if err != nil {
		return nil, 0, err
	}
	defer d.stop()
	fds, err := d.watchers(n)
	if err != nil {
		return nil, 0, err
	}
	defer closeAll(fds)
	time.Sleep(2 * time.Second) // settle
	var out []float64
	threads := 0
	for range windows {
		c0, _ := d.ctxSwitches()
		time.Sleep(win)
		c1, t := d.ctxSwitches()
		threads = max(threads, t)
		out = append(out, float64(c1-c0))
	}
	return out, threads, nil
}
