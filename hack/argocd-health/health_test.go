// Package argocdhealth tests kiln's Argo CD health checks (config/argocd) the
// way Argo CD runs them: gopher-lua, the libraries Argo CD opens for a script
// from argocd-cm, and the object handed over as the global `obj`.
package argocdhealth

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// configDir holds the script, health_test.yaml and testdata/.
const configDir = "../../config/argocd"

// script is the health check of both kinds.
const script = "health.lua"

var update = flag.Bool("update", false, "rewrite the script embedded in values-argocd.yaml and argocd-cm-patch.yaml from health.lua")

// The argocd-cm keys, sorted; each holds the whole of health.lua.
var configMapKeys = []string{
	"resource.customizations.health.kiln.dev_ImageBuild",
	"resource.customizations.health.kiln.dev_ImagePolicy",
}

// Files that embed the script, and where the argocd-cm data sits in each.
var embedders = []struct {
	file string
	path []string
}{
	{"values-argocd.yaml", []string{"configs", "cm"}},
	{"argocd-cm-patch.yaml", []string{"data"}},
}

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type testCase struct {
	HealthStatus healthStatus `json:"healthStatus"`
	InputPath    string       `json:"inputPath"`
}

// Health statuses Argo CD accepts from a script; any other becomes Unknown.
var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(configDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadCases(t *testing.T) []testCase {
	t.Helper()
	var doc struct {
		Tests []testCase `json:"tests"`
	}
	if err := yaml.UnmarshalStrict(readFile(t, "health_test.yaml"), &doc); err != nil {
		t.Fatalf("health_test.yaml: %v", err)
	}
	if len(doc.Tests) == 0 {
		t.Fatal("health_test.yaml lists no tests")
	}
	return doc.Tests
}

// decodeValue turns JSON-shaped Go values into Lua values, as Argo CD's
// util/lua decodeValue does (json.Number becomes a string there too).
func decodeValue(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		arr := L.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(decodeValue(L, item))
		}
		return arr
	case map[string]any:
		tbl := L.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), decodeValue(L, item))
		}
		return tbl
	}
	return lua.LNil
}

// safeOsFuncs stands in for Argo CD's safe os library (time and date only).
var safeOsFuncs = map[string]lua.LGFunction{
	"time": func(L *lua.LState) int {
		L.Push(lua.LNumber(time.Now().Unix()))
		return 1
	},
	"date": func(L *lua.LState) int {
		L.Push(lua.LString(time.Now().UTC().Format(time.RFC3339)))
		return 1
	},
}

func safeOsLoader(L *lua.LState) int {
	L.Push(L.SetFuncs(L.NewTable(), safeOsFuncs))
	return 1
}

// newSandbox is the Lua state Argo CD gives a health script from argocd-cm
// (useOpenLibs unset): package, base and table only. Argo CD's OpenSafeOs
// registers under the table module's name, which already exists, so no
// global `os` appears; `require("os")` gets the safe subset.
func newSandbox() *lua.LState {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			panic(err)
		}
	}
	L.PreloadModule(lua.OsLibName, safeOsLoader)
	return L
}

// runHealth runs a health script on an object as Argo CD does and returns
// what Argo CD would show. It also fails on globals the script leaves behind.
func runHealth(source string, object map[string]any) (healthStatus, error) {
	L := newSandbox()
	defer L.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", decodeValue(L, object))
	before := globalNames(L)
	if err := L.DoString(source); err != nil {
		return healthStatus{}, err
	}
	for name := range globalNames(L) {
		if !before[name] {
			return healthStatus{}, fmt.Errorf("script set global %q; use local", name)
		}
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("expect table output from Lua script, not %s", L.Get(-1).Type())
	}
	var hs healthStatus
	for field, dst := range map[string]*string{"status": &hs.Status, "message": &hs.Message} {
		switch v := ret.RawGetString(field).(type) {
		case lua.LString:
			*dst = string(v)
		case *lua.LNilType:
		default:
			return healthStatus{}, fmt.Errorf("hs.%s is a %s, not a string", field, v.Type())
		}
	}
	if !validStatuses[hs.Status] {
		return healthStatus{}, fmt.Errorf("invalid health status %q (Argo CD shows Unknown)", hs.Status)
	}
	return hs, nil
}

func globalNames(L *lua.LState) map[string]bool {
	names := map[string]bool{}
	L.G.Global.ForEach(func(k, _ lua.LValue) { names[k.String()] = true })
	return names
}

// parseObject reads a YAML object the way Argo CD's tests do: YAML to JSON
// to map[string]any (numbers become float64).
func parseObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	object := map[string]any{}
	if err := yaml.Unmarshal(b, &object); err != nil {
		t.Fatal(err)
	}
	return object
}

func TestHealthChecks(t *testing.T) {
	source := string(readFile(t, script))
	for _, tc := range loadCases(t) {
		t.Run(strings.TrimSuffix(tc.InputPath, ".yaml"), func(t *testing.T) {
			object := parseObject(t, readFile(t, tc.InputPath))
			got, err := runHealth(source, object)
			if err != nil {
				t.Fatalf("%s on %s: %v", script, tc.InputPath, err)
			}
			if got != tc.HealthStatus {
				t.Errorf("%s on %s:\n got  status %q message %q\n want status %q message %q",
					script, tc.InputPath, got.Status, got.Message, tc.HealthStatus.Status, tc.HealthStatus.Message)
			}
		})
	}
}

// The script is tested on every status it can report.
func TestEveryStatusIsCovered(t *testing.T) {
	seen := map[string]bool{}
	for _, tc := range loadCases(t) {
		seen[tc.HealthStatus.Status] = true
	}
	for _, status := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !seen[status] {
			t.Errorf("health_test.yaml has no %s case", status)
		}
	}
}

func TestEveryTestdataFileIsUsed(t *testing.T) {
	used := map[string]bool{}
	for _, tc := range loadCases(t) {
		used[filepath.ToSlash(filepath.Clean(tc.InputPath))] = true
	}
	var files []string
	err := filepath.WalkDir(filepath.Join(configDir, "testdata"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(configDir, path)
		files = append(files, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata files found")
	}
	for _, f := range files {
		if !used[f] {
			t.Errorf("%s is used by no case in health_test.yaml", f)
		}
	}
}

// Edge cases no real object shows: the script must still answer, not fail.
func TestOddObjects(t *testing.T) {
	cases := []struct {
		name   string
		object string
		want   healthStatus
	}{
		{"empty object", `{}`, healthStatus{"Progressing", "waiting for kiln to report status"}},
		{"status not a table", `{"metadata":{"generation":1},"status":"broken"}`,
			healthStatus{"Progressing", "waiting for kiln to observe generation 1"}},
		{"spec not a table", `{"spec":true,"metadata":{"generation":2},"status":{"observedGeneration":2}}`,
			healthStatus{"Progressing", "waiting for kiln to report Ready"}},
		{"suspend not a bool", `{"spec":{"suspend":"yes"},"metadata":{"generation":1}}`,
			healthStatus{"Progressing", "waiting for kiln to observe generation 1"}},
		{"no generation, status observed", `{"status":{"observedGeneration":1}}`,
			healthStatus{"Progressing", "waiting for kiln to report Ready"}},
		{"generation as string", `{"metadata":{"generation":"4"},"status":{"observedGeneration":"3"}}`,
			healthStatus{"Progressing", "waiting for kiln to observe generation 4"}},
		{"observed newer than generation", `{"metadata":{"generation":1},"status":{"observedGeneration":2,"conditions":[{"type":"Ready","status":"True","message":"ok"}]}}`,
			healthStatus{"Healthy", "ok"}},
		{"conditions not a list", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":"Ready"}}`,
			healthStatus{"Progressing", "waiting for kiln to report Ready"}},
		{"junk conditions", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[null,7,"x",{"status":"True"},{"type":"Ready"}]}}`,
			healthStatus{"Progressing", "waiting for kiln to report Ready"}},
		{"Ready Unknown, nothing in progress", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"Unknown","reason":"Pending","message":"queued"}]}}`,
			healthStatus{"Progressing", "queued"}},
		{"Stalled without reason or message", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Stalled","status":"True"}]}}`,
			healthStatus{"Degraded", "Stalled: see status.conditions"}},
		{"Stalled False is ignored", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"True","message":"fine"},{"type":"Stalled","status":"False"}]}}`,
			healthStatus{"Healthy", "fine"}},
		{"Ready False without message", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"False","reason":"Failed"}]}}`,
			healthStatus{"Degraded", "Failed"}},
		{"Reconciling without message", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Reconciling","status":"True"}]}}`,
			healthStatus{"Progressing", "reconciling"}},
		{"Ready True without message", `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"True"}]}}`,
			healthStatus{"Healthy", "ready"}},
	}
	source := string(readFile(t, script))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			object := map[string]any{}
			if err := json.Unmarshal([]byte(c.object), &object); err != nil {
				t.Fatal(err)
			}
			got, err := runHealth(source, object)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// ImageBuild's Healthy message, from status.latestImage when it is usable.
func TestImageBuildHealthyMessage(t *testing.T) {
	source := string(readFile(t, script))
	ready := `{"type":"Ready","status":"True","message":"from Ready"}`
	for _, c := range []struct{ latest, want string }{
		{`{"version":"2025-06-02-0300"}`, "latest image 2025-06-02-0300"},
		{`{"version":"2025-06-02-0300","artifacts":[{"region":"nyc3"},{"region":"ams3","imageId":"181023941"}]}`, "latest image 2025-06-02-0300: ams3=181023941"},
		{`{"version":""}`, "from Ready"},
		{`{"artifacts":[]}`, "from Ready"},
		{`"2025-06-02-0300"`, "from Ready"},
	} {
		object := map[string]any{}
		doc := `{"metadata":{"generation":1},"status":{"observedGeneration":1,"conditions":[` + ready + `],"latestImage":` + c.latest + `}}`
		if err := json.Unmarshal([]byte(doc), &object); err != nil {
			t.Fatal(err)
		}
		got, err := runHealth(source, object)
		if err != nil {
			t.Fatal(err)
		}
		if want := (healthStatus{"Healthy", c.want}); got != want {
			t.Errorf("latestImage %s: got %+v, want %+v", c.latest, got, want)
		}
	}
}

// A cheap guard for branches no case reaches: no library calls Argo CD lacks.
func TestScriptUsesOnlyArgoCDLibraries(t *testing.T) {
	banned := regexp.MustCompile(`\b(string|math|io|os|debug|coroutine|channel)\s*\.|:\s*[a-z]+\s*\(`)
	for i, line := range strings.Split(string(readFile(t, script)), "\n") {
		code, _, _ := strings.Cut(line, "--")
		if m := banned.FindString(code); m != "" {
			t.Errorf("%s:%d uses %q, which Argo CD does not provide to argocd-cm scripts", script, i+1, m)
		}
	}
}

// lookup walks a parsed YAML document down a path of map keys.
func lookup(doc map[string]any, path []string) (map[string]any, error) {
	cur := doc
	for _, key := range path {
		next, ok := cur[key].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("no map at %s", strings.Join(path, "."))
		}
		cur = next
	}
	return cur, nil
}

// values-argocd.yaml and argocd-cm-patch.yaml carry health.lua verbatim under
// both keys.
func TestEmbeddedScriptsMatch(t *testing.T) {
	source := string(readFile(t, script))
	if *update {
		for _, e := range embedders {
			path := filepath.Join(configDir, e.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range configMapKeys {
				if b, err = replaceBlock(b, key, []byte(source)); err != nil {
					t.Fatalf("%s: %v", e.file, err)
				}
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, e := range embedders {
		doc := map[string]any{}
		if err := yaml.UnmarshalStrict(readFile(t, e.file), &doc); err != nil {
			t.Fatalf("%s: %v", e.file, err)
		}
		data, err := lookup(doc, e.path)
		if err != nil {
			t.Fatalf("%s: %v", e.file, err)
		}
		var keys []string
		for k := range data {
			if strings.HasPrefix(k, "resource.customizations.") {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		if strings.Join(keys, " ") != strings.Join(configMapKeys, " ") {
			t.Errorf("%s: resource.customizations keys %v, want %v", e.file, keys, configMapKeys)
		}
		for _, key := range configMapKeys {
			if data[key] != source {
				t.Errorf("%s: %s differs from %s; run `go test ./... -run TestEmbeddedScriptsMatch -update` (in hack/argocd-health)", e.file, key, script)
			}
		}
	}
	patch := map[string]any{}
	if err := yaml.Unmarshal(readFile(t, "argocd-cm-patch.yaml"), &patch); err != nil {
		t.Fatal(err)
	}
	meta, _ := patch["metadata"].(map[string]any)
	if patch["apiVersion"] != "v1" || patch["kind"] != "ConfigMap" || meta["name"] != "argocd-cm" || meta["namespace"] != "argocd" {
		t.Errorf("argocd-cm-patch.yaml must be ConfigMap argocd/argocd-cm, is %v %v %v/%v", patch["apiVersion"], patch["kind"], meta["namespace"], meta["name"])
	}
}

// replaceBlock rewrites the block scalar under `key: |` (the key may be
// quoted) with text, indented two spaces deeper than the key.
func replaceBlock(doc []byte, key string, text []byte) ([]byte, error) {
	lines := strings.Split(string(doc), "\n")
	header := regexp.MustCompile(`^( *)"?` + regexp.QuoteMeta(key) + `"?: \|\s*$`)
	for i, line := range lines {
		m := header.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		indent := len(m[1])
		end := i + 1
		for end < len(lines) {
			l := lines[end]
			if strings.TrimSpace(l) != "" && len(l)-len(strings.TrimLeft(l, " ")) <= indent {
				break
			}
			end++
		}
		// Blank lines before the next entry separate it; keep them.
		tail := end
		for tail > i+1 && strings.TrimSpace(lines[tail-1]) == "" {
			tail--
		}
		pad := strings.Repeat(" ", indent+2)
		var body []string
		for _, l := range strings.Split(strings.TrimSuffix(string(text), "\n"), "\n") {
			if l == "" {
				body = append(body, "")
			} else {
				body = append(body, pad+l)
			}
		}
		out := append([]string{}, lines[:i+1]...)
		out = append(out, body...)
		out = append(out, lines[tail:]...)
		return []byte(strings.Join(out, "\n")), nil
	}
	return nil, fmt.Errorf("no line `%s: |`", key)
}
