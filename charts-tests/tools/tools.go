//go:build tools

// Package tools pins the chart test runner. helm-unittest's go.mod carries a replace
// directive, so `go install pkg@version` refuses it; building it from this module (which
// repeats the replace) works and keeps its checksums in go.sum.
package tools

import _ "github.com/helm-unittest/helm-unittest/cmd/helm-unittest"
