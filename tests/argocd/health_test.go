// Package argocd tests tickflow's Argo CD health checks (manifests/argocd):
// the Lua kept in health/*.lua is the Lua embedded in argocd-cm-health.yaml,
// and each script, run the way Argo CD runs resource health checks (gopher-lua,
// the version Argo CD uses), gives the expected status and message for every
// phase and rule of the operator's status.
//
//	go test ./...           (or tests/argocd/run.sh)
//	go test ./... -update   rewrites argocd-cm-health.yaml from health/*.lua
package argocd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite argocd-cm-health.yaml from the health/*.lua files")

const manifestsDir = "../../manifests/argocd"

// The health checks: argocd-cm key → Lua file (relative to manifestsDir).
var healthChecks = []struct {
	kind, key, file, fixtures string
}{
	{"StreamQuery", "resource.customizations.health.tickflow.io_StreamQuery", "health/streamquery.lua", "testdata/streamquery.yaml"},
	{"MarketProducer", "resource.customizations.health.tickflow.io_MarketProducer", "health/marketproducer.lua", "testdata/marketproducer.yaml"},
}

func readLua(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(manifestsDir, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// argocd-cm-health.yaml ⇔ health/*.lua

type configMap struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
}

const cmHeader = `# Argo CD health checks for tickflow's custom resources, as a patch for the
# argocd-cm ConfigMap:
#
#   kubectl -n argocd patch configmap argocd-cm --patch-file manifests/argocd/argocd-cm-health.yaml
#
# GENERATED from health/streamquery.lua and health/marketproducer.lua: edit
# those, then run ` + "`tests/argocd/run.sh -update`" + ` (tests/argocd fails while
# the Lua here and in health/*.lua differ). See README.md for what each status
# means.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
`

// renderConfigMap writes the Lua files into the ConfigMap as literal blocks.
func renderConfigMap(t *testing.T) []byte {
	var b bytes.Buffer
	b.WriteString(cmHeader)
	for _, hc := range healthChecks {
		src := readLua(t, hc.file)
		if !strings.HasSuffix(src, "\n") || strings.HasSuffix(src, "\n\n") {
			t.Fatalf("%s must end with exactly one newline (a YAML literal block keeps exactly one)", hc.file)
		}
		fmt.Fprintf(&b, "  %s: |\n", hc.key)
		for _, line := range strings.SplitAfter(src, "\n") {
			switch {
			case line == "":
			case strings.TrimSpace(line) == "":
				if line != "\n" {
					t.Fatalf("%s has a line of only whitespace, which a YAML literal block cannot keep", hc.file)
				}
				b.WriteString("\n")
			default:
				b.WriteString("    " + line)
			}
		}
	}
	return b.Bytes()
}

func TestConfigMapEmbedsLuaFiles(t *testing.T) {
	path := filepath.Join(manifestsDir, "argocd-cm-health.yaml")
	if *update {
		if err := os.WriteFile(path, renderConfigMap(t), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cm configMap
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if cm.APIVersion != "v1" || cm.Kind != "ConfigMap" || cm.Metadata.Name != "argocd-cm" || cm.Metadata.Namespace != "argocd" {
		t.Fatalf("%s must be the v1 ConfigMap argocd/argocd-cm, got %s %s %s/%s",
			path, cm.APIVersion, cm.Kind, cm.Metadata.Namespace, cm.Metadata.Name)
	}
	want := map[string]bool{}
	for _, hc := range healthChecks {
		want[hc.key] = true
		got, ok := cm.Data[hc.key]
		if !ok {
			t.Errorf("%s: data has no key %s", path, hc.key)
			continue
		}
		file := readLua(t, hc.file)
		if got != file {
			t.Errorf("%s: the Lua under %s differs from %s (edit the .lua file, then run tests/argocd/run.sh -update):\n%s",
				path, hc.key, hc.file, firstDifference(got, file))
		}
	}
	for key := range cm.Data {
		if !want[key] {
			t.Errorf("%s: unexpected key %s (this test knows only the tickflow health checks)", path, key)
		}
	}
}

func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y || i >= len(al) || i >= len(bl) {
			return fmt.Sprintf("line %d: configmap %q, file %q", i+1, x, y)
		}
	}
	return "(same lines, different bytes)"
}

// ---------------------------------------------------------------------------
// Running a health script the way Argo CD does.
//
// Mirrors argo-cd util/lua (VM.runLua and VM.ExecuteHealthLua, Argo CD 2.x):
// a gopher-lua state without the standard libraries (custom health checks run
// with useOpenLibs false), then the package, base and table libraries (Argo CD
// also loads a restricted os library, which these scripts must not need), a
// one-second deadline, the object as the global `obj` (decodeValue below), the
// returned table encoded to JSON and decoded into {status, message}, and a
// status outside Argo CD's health codes turned into Unknown.

type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

const invalidHealthStatus = "Lua returned an invalid health status"

var validStatus = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// libsMode selects the libraries the script sees.
type libsMode string

const (
	argoLibs libsMode = "argo-libs" // package, base, table: what Argo CD opens
	baseOnly libsMode = "base-only" // base only: the scripts promise not to need more
)

func executeHealthLua(obj map[string]interface{}, script string, mode libsMode) (*healthStatus, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	libs := []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	}
	if mode == baseOnly {
		libs = libs[1:2]
	}
	for _, pair := range libs {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret := l.Get(-1)
	tbl, ok := ret.(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type().String())
	}
	goValue, err := encodeValue(tbl)
	if err != nil {
		return nil, err
	}
	jsonBytes, err := json.Marshal(goValue)
	if err != nil {
		return nil, err
	}
	hs := &healthStatus{}
	if err := json.Unmarshal(jsonBytes, hs); err != nil {
		return nil, err
	}
	if !validStatus[hs.Status] {
		return &healthStatus{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return hs, nil
}

// decodeValue is Argo CD's conversion of the unstructured object into Lua
// values: maps → tables, slices → 1-based array tables, numbers → numbers
// (json.Number → string), strings, bools; nil and anything else → nil.
func decodeValue(L *lua.LState, value interface{}) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []interface{}:
		arr := L.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(L, item))
		}
		return arr
	case map[string]interface{}:
		tbl := L.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(L, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

// encodeValue turns the returned Lua value into JSON-able Go values the way
// gopher-json's Encode (used by Argo CD) does: a table with an array part is
// an array, other tables are objects with string keys, an empty table is [],
// and functions, userdata and the like are errors.
func encodeValue(v lua.LValue) (interface{}, error) {
	switch v := v.(type) {
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		return float64(v), nil
	case lua.LString:
		return string(v), nil
	case *lua.LNilType:
		return nil, nil
	case *lua.LTable:
		if n := v.MaxN(); n > 0 {
			arr := make([]interface{}, 0, n)
			for i := 1; i <= n; i++ {
				item, err := encodeValue(v.RawGetInt(i))
				if err != nil {
					return nil, err
				}
				arr = append(arr, item)
			}
			return arr, nil
		}
		obj := map[string]interface{}{}
		var err error
		v.ForEach(func(key, value lua.LValue) {
			if err != nil {
				return
			}
			k, ok := key.(lua.LString)
			if !ok {
				err = fmt.Errorf("cannot encode a table with a %s key to JSON", key.Type())
				return
			}
			obj[string(k)], err = encodeValue(value)
		})
		if err != nil {
			return nil, err
		}
		if len(obj) == 0 {
			return []interface{}{}, nil
		}
		return obj, nil
	}
	return nil, fmt.Errorf("cannot encode %s to JSON", v.Type())
}

// toUnstructured gives a fixture the shape Argo CD's controller sees: the
// object as the API server's JSON decoded into an unstructured map, where
// integers are int64 and other numbers float64 (k8s.io/apimachinery's
// unstructured JSON decoding).
func toUnstructured(t *testing.T, v interface{}) map[string]interface{} {
	t.Helper()
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out interface{}
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	obj, ok := convertNumbers(out).(map[string]interface{})
	if !ok {
		t.Fatalf("fixture object is not a mapping: %s", raw)
	}
	return obj
}

func convertNumbers(v interface{}) interface{} {
	switch v := v.(type) {
	case map[string]interface{}:
		for k, item := range v {
			v[k] = convertNumbers(item)
		}
		return v
	case []interface{}:
		for i, item := range v {
			v[i] = convertNumbers(item)
		}
		return v
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		if f, err := v.Float64(); err == nil {
			return f
		}
		return v.String()
	}
	return v
}

// ---------------------------------------------------------------------------
// Fixtures: testdata/<kind>.yaml, a list of cases.

type fixture struct {
	Name string `yaml:"name"`
	Want struct {
		Status          string `yaml:"status"`
		Message         string `yaml:"message"`         // exact, when set
		MessageContains string `yaml:"messageContains"` // substring, when set
	} `yaml:"want"`
	// Rule names the rule of README.md ("Health statuses") the case covers.
	Rule   string                 `yaml:"rule"`
	Object map[string]interface{} `yaml:"object"`
}

func loadFixtures(t *testing.T, path string) []fixture {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cases []fixture
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&cases); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if c.Name == "" || seen[c.Name] {
			t.Fatalf("%s: empty or duplicate case name %q", path, c.Name)
		}
		seen[c.Name] = true
		if !validStatus[c.Want.Status] {
			t.Fatalf("%s: case %q: want.status %q is not an Argo CD health status", path, c.Name, c.Want.Status)
		}
		if c.Want.Message == "" && c.Want.MessageContains == "" {
			t.Fatalf("%s: case %q: set want.message or want.messageContains", path, c.Name)
		}
		if key := keyWithSpace(c.Object); key != "" {
			t.Fatalf("%s: case %q: object key %q: quote flow-style values that contain \", \"", path, c.Name, key)
		}
	}
	return cases
}

// keyWithSpace finds a mapping key with a space, the trace of an unquoted
// comma in a flow mapping ({message: a, b} has a key "b").
func keyWithSpace(v interface{}) string {
	switch v := v.(type) {
	case map[string]interface{}:
		for k, item := range v {
			if strings.ContainsAny(k, " \t") {
				return k
			}
			if found := keyWithSpace(item); found != "" {
				return found
			}
		}
	case []interface{}:
		for _, item := range v {
			if found := keyWithSpace(item); found != "" {
				return found
			}
		}
	}
	return ""
}

func TestHealthChecks(t *testing.T) {
	for _, hc := range healthChecks {
		hc := hc
		t.Run(hc.kind, func(t *testing.T) {
			script := readLua(t, hc.file)
			cases := loadFixtures(t, hc.fixtures)
			rules := map[string]bool{}
			statuses := map[string]bool{}
			for _, c := range cases {
				c := c
				rules[c.Rule] = true
				statuses[c.Want.Status] = true
				t.Run(c.Name, func(t *testing.T) {
					if kind, _ := c.Object["kind"].(string); kind != hc.kind {
						t.Fatalf("fixture object kind %q, want %q", kind, hc.kind)
					}
					for _, mode := range []libsMode{argoLibs, baseOnly} {
						got, err := executeHealthLua(toUnstructured(t, c.Object), script, mode)
						if err != nil {
							t.Fatalf("%s: Lua error: %v", mode, err)
						}
						if got.Status != c.Want.Status {
							t.Errorf("%s: status %q (message %q), want %q", mode, got.Status, got.Message, c.Want.Status)
						}
						if c.Want.Message != "" && got.Message != c.Want.Message {
							t.Errorf("%s: message %q, want %q", mode, got.Message, c.Want.Message)
						}
						if c.Want.MessageContains != "" && !strings.Contains(got.Message, c.Want.MessageContains) {
							t.Errorf("%s: message %q, want it to contain %q", mode, got.Message, c.Want.MessageContains)
						}
					}
				})
			}
			// Every status the checks can give, and every rule, has a case.
			for _, s := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
				if !statuses[s] {
					t.Errorf("%s: no case expects %s", hc.fixtures, s)
				}
			}
			wantRules := []string{"observe", "failed", "suspended", "suspending", "healthy", "progressing", "robust"}
			if hc.kind == "StreamQuery" {
				wantRules = append(wantRules, "sqlvalid")
			}
			for _, r := range wantRules {
				if !rules[r] {
					t.Errorf("%s: no case for rule %q", hc.fixtures, r)
				}
			}
			var unknown []string
			for r := range rules {
				found := false
				for _, w := range wantRules {
					found = found || r == w
				}
				if !found {
					unknown = append(unknown, r)
				}
			}
			sort.Strings(unknown)
			if len(unknown) > 0 {
				t.Errorf("%s: unknown rule names %v (want one of %v)", hc.fixtures, unknown, wantRules)
			}
		})
	}
}

// The harness itself behaves like Argo CD: a script that returns a status
// Argo CD does not know gives Unknown, a non-table return is an error, a
// runaway script is stopped, and a library beyond base is absent in baseOnly
// mode (so a script that needs one fails the cases above).
func TestHarness(t *testing.T) {
	obj := map[string]interface{}{"kind": "StreamQuery", "metadata": map[string]interface{}{"generation": int64(2)}}
	hs, err := executeHealthLua(obj, `return {status = "Fine", message = "x"}`, argoLibs)
	if err != nil || hs.Status != "Unknown" || hs.Message != invalidHealthStatus {
		t.Errorf("invalid status: got %+v, %v", hs, err)
	}
	if _, err := executeHealthLua(obj, `return "Healthy"`, argoLibs); err == nil {
		t.Error("a string return must be an error")
	}
	if _, err := executeHealthLua(obj, `while true do end`, argoLibs); err == nil {
		t.Error("an endless loop must be stopped by the deadline")
	}
	hs, err = executeHealthLua(obj, `return {status = "Healthy", message = "gen " .. tostring(obj.metadata.generation)}`, argoLibs)
	if err != nil || hs.Message != "gen 2" {
		t.Errorf("int64 generation must read as 2: got %+v, %v", hs, err)
	}
	if _, err := executeHealthLua(obj, `table.insert({}, 1) return {status = "Healthy"}`, baseOnly); err == nil {
		t.Error("the table library must be absent in baseOnly mode")
	}
	if _, err := executeHealthLua(obj, `local s = string.format("%d", 1) return {status = "Healthy"}`, argoLibs); err == nil {
		t.Error("the string library must be absent, as in Argo CD's custom health checks")
	}
	var e *lua.ApiError
	_, err = executeHealthLua(obj, `error("boom")`, argoLibs)
	if !errors.As(err, &e) {
		t.Errorf("a Lua error must surface as an error: %v", err)
	}
}
