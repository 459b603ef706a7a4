// Package kstatus checks that Flux's health checks read kiln's objects as
// intended, by running the kstatus library itself over the objects in
// config/argocd/testdata and comparing with expected.yaml.
//
// Flux's kustomize-controller (wait: true, healthChecks) asks status.Compute
// of its kstatus fork, github.com/fluxcd/cli-utils, whether each object is
// Current, InProgress or Failed; this test runs that same package.
package kstatus

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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

	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			res, err := status.Compute(loadObject(t, name))
			if err != nil {
				t.Fatalf("status.Compute: %v", err)
			}
			got := string(res.Status)
			t.Logf("computed %s: %q", got, res.Message)

			want, ok := exp[name]
			if !ok {
				return // reported above
			}
			if got != want.Status {
				t.Errorf("status %s, expected.yaml says %s (message %q)", got, want.Status, res.Message)
			}
			if want.Message != "" && res.Message != want.Message {
				t.Errorf("message %q, expected.yaml says %q", res.Message, want.Message)
			}
		})
	}
}
