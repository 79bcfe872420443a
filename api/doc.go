// Package api holds Sailbox's JSON APIs and is the one place where domain
// errors become HTTP status codes:
//
//   - this package: the daemon's wire types (Box, requests, the error
//     body) and its OpenAPI document (openapi.yaml);
//   - api/lifecycle: the box state machine, one table;
//   - internal/apiserver (not importable): sailboxd's HTTP server on a Unix socket;
//   - api/client: the Go client of that server;
//   - api/vmmapi: the per-VM control socket of sailbox-vmm and its client;
//   - api/netapi: a box network's addresses, egress rules, the flags of
//     sailbox-net and its control socket's client.
package api
