package api

import _ "embed"

// OpenAPI is the daemon API's OpenAPI 3 document (openapi.yaml).
//
//go:embed openapi.yaml
var OpenAPI []byte
