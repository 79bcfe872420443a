// Package api holds Sailbox's JSON APIs: the per-VM control socket of
// sailbox-vmm (package vmmapi) and, later, the daemon's API. It is the one
// place where domain errors become HTTP status codes.
package api
