// Package kstatus checks that Flux's health checks read kiln's objects as
// intended, by running the kstatus library itself over the objects in
// config/argocd/testdata and comparing with expected.yaml.
//
// Flux's kustomize-controller (wait: true, healthChecks) asks kstatus's
// status.Compute whether each object is Current, InProgress or Failed. Flux
// vendors a fork, github.com/fluxcd/cli-utils; the upstream library is
// sigs.k8s.io/cli-utils. Both are run: their pkg/kstatus/status is the same
// code, and the test fails if they ever disagree.
package kstatus

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	fluxstatus "github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// testdata holds one directory of objects per kind.
const testdata = "../../config/argocd/testdata"

// The fixture directories and the kind each must hold.
var fixtureDirs = map[string]string{
	"imagebuild":  "ImageBuild",
	"imagepolicy": "ImagePolicy",
}

const apiVersion = "kiln.dev/v1alpha1"

// expectation is one entry of expected.yaml.
type expectation struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// Every status kstatus can return.
var validStatuses = map[string]bool{
	string(status.InProgressStatus):  true,
	string(status.FailedStatus):      true,
	string(status.CurrentStatus):     true,
	string(status.TerminatingStatus): true,
	string(status.NotFoundStatus):    true,
	string(status.UnknownStatus):     true,
}

func loadExpectations(t *testing.T) map[string]expectation {
	t.Helper()
	b, err := os.ReadFile("expected.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var exp map[string]expectation
	if err := yaml.UnmarshalStrict(b, &exp); err != nil {
		t.Fatalf("expected.yaml: %v", err)
	}
	if len(exp) == 0 {
		t.Fatal("expected.yaml has no entries")
	}
	for name, e := range exp {
		if !validStatuses[e.Status] {
			t.Errorf("expected.yaml: %s: %q is not a kstatus status", name, e.Status)
		}
	}
	return exp
}

// fixtures lists the objects, as paths relative to testdata.
func fixtures(t *testing.T) []string {
	t.Helper()
	var names []string
	for dir := range fixtureDirs {
		matches, err := filepath.Glob(filepath.Join(testdata, dir, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range matches {
			rel, err := filepath.Rel(testdata, m)
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, filepath.ToSlash(rel))
		}
	}
	if len(names) == 0 {
		t.Fatalf("no fixtures under %s", testdata)
	}
	sort.Strings(names)
	return names
}

// loadObject reads a fixture the way Flux sees an object: YAML to JSON, then
// decoded by unstructured's JSON decoder, as client-go decodes what the API
// server returns. That decoder turns whole numbers into int64; decoding the
// YAML straight into a map[string]interface{} would give float64, and
// kstatus's NestedInt64 lookups of metadata.generation and
// status.observedGeneration would fail on it.
func loadObject(t *testing.T, name string) *unstructured.Unstructured {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	wantKind := fixtureDirs[strings.Split(name, "/")[0]]
	if u.GetAPIVersion() != apiVersion || u.GetKind() != wantKind {
		t.Fatalf("%s: is %s %s, want %s %s", name, u.GetAPIVersion(), u.GetKind(), apiVersion, wantKind)
	}
	return u
}

type computed struct {
	status, message string
}

func TestKstatus(t *testing.T) {
	exp := loadExpectations(t)
	names := fixtures(t)

	seen := map[string]bool{}
	for _, name := range names {
		seen[name] = true
		if _, ok := exp[name]; !ok {
			t.Errorf("%s: no entry in expected.yaml", name)
		}
	}
	var stale []string
	for name := range exp {
		if !seen[name] {
			stale = append(stale, name)
		}
	}
	sort.Strings(stale)
	for _, name := range stale {
		t.Errorf("expected.yaml: %s: no such fixture under %s", name, testdata)
	}

	results := map[string]computed{}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			u := loadObject(t, name)

			res, err := status.Compute(u.DeepCopy())
			if err != nil {
				t.Fatalf("sigs.k8s.io/cli-utils status.Compute: %v", err)
			}
			fres, err := fluxstatus.Compute(u.DeepCopy())
			if err != nil {
				t.Fatalf("github.com/fluxcd/cli-utils status.Compute: %v", err)
			}
			got := computed{string(res.Status), res.Message}
			results[name] = got
			t.Logf("computed %s: %q", got.status, got.message)

			if fgot := (computed{string(fres.Status), fres.Message}); fgot != got {
				t.Errorf("Flux's fork disagrees with upstream: fork %s %q, upstream %s %q",
					fgot.status, fgot.message, got.status, got.message)
			}

			want, ok := exp[name]
			if !ok {
				return // reported above
			}
			if got.status != want.Status {
				t.Errorf("status %s, expected.yaml says %s (message %q)", got.status, want.Status, got.message)
			}
			if want.Message != "" && got.message != want.Message {
				t.Errorf("message %q, expected.yaml says %q", got.message, want.Message)
			}
		})
	}

	// A table of all results, for the -v output.
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-45s %-11s %s\n", "FIXTURE", "STATUS", "MESSAGE")
	for _, name := range names {
		r, ok := results[name]
		if !ok {
			fmt.Fprintf(&sb, "%-45s %-11s\n", name, "(error)")
			continue
		}
		fmt.Fprintf(&sb, "%-45s %-11s %s\n", name, r.status, oneLine(r.message, 110))
	}
	t.Log(sb.String())
}

// oneLine folds a message onto one line and shortens it for the table.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > max {
		return string(r[:max-1]) + "…"
	}
	return s
}
