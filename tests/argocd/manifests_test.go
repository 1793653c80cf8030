package argocd

// Checks of the Argo CD manifests in manifests/argocd that need no cluster:
// every file decodes strictly into the Argo CD v1alpha1 fields it may use (a
// misspelt field is an error, as it would be silently ignored by Argo CD), and
// the project, the Applications, their sync waves, sync options and sources
// fit together.

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"gopkg.in/yaml.v3"
)

type objectMeta struct {
	Name        string            `yaml:"name"`
	Namespace   string            `yaml:"namespace"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
	Finalizers  []string          `yaml:"finalizers"`
}

type groupKind struct {
	Group string `yaml:"group"`
	Kind  string `yaml:"kind"`
}

type destination struct {
	Server    string `yaml:"server"`
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

type appProject struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Description              string        `yaml:"description"`
		SourceRepos              []string      `yaml:"sourceRepos"`
		Destinations             []destination `yaml:"destinations"`
		ClusterResourceWhitelist []groupKind   `yaml:"clusterResourceWhitelist"`
	} `yaml:"spec"`
}

type helmParameter struct {
	Name        string `yaml:"name"`
	Value       string `yaml:"value"`
	ForceString bool   `yaml:"forceString"`
}

type appSource struct {
	RepoURL        string `yaml:"repoURL"`
	TargetRevision string `yaml:"targetRevision"`
	Path           string `yaml:"path"`
	Chart          string `yaml:"chart"`
	Ref            string `yaml:"ref"`
	Helm           *struct {
		ReleaseName string          `yaml:"releaseName"`
		ValueFiles  []string        `yaml:"valueFiles"`
		Parameters  []helmParameter `yaml:"parameters"`
	} `yaml:"helm"`
}

type application struct {
	APIVersion string     `yaml:"apiVersion"`
	Kind       string     `yaml:"kind"`
	Metadata   objectMeta `yaml:"metadata"`
	Spec       struct {
		Project     string      `yaml:"project"`
		Source      *appSource  `yaml:"source"`
		Sources     []appSource `yaml:"sources"`
		Destination destination `yaml:"destination"`
		SyncPolicy  struct {
			Automated *struct {
				Prune    bool `yaml:"prune"`
				SelfHeal bool `yaml:"selfHeal"`
			} `yaml:"automated"`
			SyncOptions []string `yaml:"syncOptions"`
			Retry       *struct {
				Limit   int `yaml:"limit"`
				Backoff *struct {
					Duration    string `yaml:"duration"`
					Factor      int    `yaml:"factor"`
					MaxDuration string `yaml:"maxDuration"`
				} `yaml:"backoff"`
			} `yaml:"retry"`
		} `yaml:"syncPolicy"`
	} `yaml:"spec"`
}

type kustomization struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Namespace  string   `yaml:"namespace"`
	Resources  []string `yaml:"resources"`
}

func decodeStrict(t *testing.T, file string, out interface{}) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(manifestsDir, file))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

const (
	gitRepo   = "https://github.com/tickflow/tickflow.git"
	inCluster = "https://kubernetes.default.svc"
)

func wave(t *testing.T, m objectMeta) int {
	t.Helper()
	w, ok := m.Annotations["argocd.argoproj.io/sync-wave"]
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(w)
	if err != nil {
		t.Fatalf("%s: sync-wave %q is not an integer", m.Name, w)
	}
	return n
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestArgoCDManifests(t *testing.T) {
	var project appProject
	decodeStrict(t, "project.yaml", &project)
	if project.APIVersion != "argoproj.io/v1alpha1" || project.Kind != "AppProject" ||
		project.Metadata.Name != "tickflow" || project.Metadata.Namespace != "argocd" {
		t.Fatalf("project.yaml: want AppProject argocd/tickflow, got %s %s/%s", project.Kind, project.Metadata.Namespace, project.Metadata.Name)
	}
	if got := project.Spec.SourceRepos; len(got) != 2 || !contains(got, gitRepo) || !contains(got, "https://charts.redpanda.com") {
		t.Errorf("project sourceRepos %v", got)
	}
	allowedNS := map[string]bool{}
	for _, d := range project.Spec.Destinations {
		if d.Server != inCluster {
			t.Errorf("project destination %+v is not the in-cluster server", d)
		}
		allowedNS[d.Namespace] = true
	}
	if len(allowedNS) != 3 || !allowedNS["redpanda"] || !allowedNS["tickflow"] || !allowedNS["tickflow-pipelines"] {
		t.Errorf("project destination namespaces %v", allowedNS)
	}
	wantCluster := map[groupKind]bool{
		{"apiextensions.k8s.io", "CustomResourceDefinition"}: true,
		{"rbac.authorization.k8s.io", "ClusterRole"}:         true,
		{"rbac.authorization.k8s.io", "ClusterRoleBinding"}:  true,
		{"", "Namespace"}: true,
	}
	if len(project.Spec.ClusterResourceWhitelist) != len(wantCluster) {
		t.Errorf("clusterResourceWhitelist %v", project.Spec.ClusterResourceWhitelist)
	}
	for _, gk := range project.Spec.ClusterResourceWhitelist {
		if !wantCluster[gk] {
			t.Errorf("clusterResourceWhitelist has %+v", gk)
		}
	}

	var kust kustomization
	decodeStrict(t, "kustomization.yaml", &kust)
	wantRes := []string{"project.yaml", "redpanda.yaml", "tickflow.yaml", "pipelines.yaml"}
	if len(kust.Resources) != len(wantRes) {
		t.Errorf("kustomization resources %v, want %v", kust.Resources, wantRes)
	}
	for _, r := range wantRes {
		if !contains(kust.Resources, r) {
			t.Errorf("kustomization lacks %s", r)
		}
	}

	apps := map[string]application{}
	for _, file := range []string{"redpanda.yaml", "tickflow.yaml", "pipelines.yaml", "root.yaml"} {
		var app application
		decodeStrict(t, file, &app)
		if app.APIVersion != "argoproj.io/v1alpha1" || app.Kind != "Application" || app.Metadata.Namespace != "argocd" {
			t.Errorf("%s: want an Application in namespace argocd, got %s %s", file, app.Kind, app.Metadata.Namespace)
		}
		sp := app.Spec.SyncPolicy
		if sp.Automated == nil || !sp.Automated.Prune || !sp.Automated.SelfHeal {
			t.Errorf("%s: want automated sync with prune and selfHeal", file)
		}
		if sp.Retry == nil || sp.Retry.Limit < 1 || sp.Retry.Backoff == nil || sp.Retry.Backoff.Duration == "" ||
			sp.Retry.Backoff.Factor < 2 || sp.Retry.Backoff.MaxDuration == "" {
			t.Errorf("%s: want retry with a limit and exponential backoff", file)
		}
		if app.Spec.Destination.Server != inCluster {
			t.Errorf("%s: destination server %q", file, app.Spec.Destination.Server)
		}
		if (app.Spec.Source == nil) == (len(app.Spec.Sources) == 0) {
			t.Errorf("%s: want exactly one of source and sources", file)
		}
		sources := app.Spec.Sources
		if app.Spec.Source != nil {
			sources = []appSource{*app.Spec.Source}
		}
		if file != "root.yaml" {
			if app.Spec.Project != "tickflow" {
				t.Errorf("%s: project %q", file, app.Spec.Project)
			}
			if !allowedNS[app.Spec.Destination.Namespace] {
				t.Errorf("%s: destination namespace %q is not allowed by the project", file, app.Spec.Destination.Namespace)
			}
			if !contains(sp.SyncOptions, "CreateNamespace=true") {
				t.Errorf("%s: want CreateNamespace=true", file)
			}
			for _, s := range sources {
				if !contains(project.Spec.SourceRepos, s.RepoURL) {
					t.Errorf("%s: source %s is not allowed by the project", file, s.RepoURL)
				}
			}
		}
		apps[file] = app
	}

	// Redpanda: the official chart at a pinned version, values from the git repo.
	rp := apps["redpanda.yaml"]
	if rp.Spec.Destination.Namespace != "redpanda" || len(rp.Spec.Sources) != 2 {
		t.Fatalf("redpanda.yaml: want namespace redpanda and two sources")
	}
	chart, values := rp.Spec.Sources[0], rp.Spec.Sources[1]
	if chart.RepoURL != "https://charts.redpanda.com" || chart.Chart != "redpanda" || chart.Helm == nil ||
		len(chart.Helm.ValueFiles) != 1 || chart.Helm.ValueFiles[0] != "$values/charts/redpanda-kind-values.yaml" {
		t.Errorf("redpanda.yaml: chart source %+v", chart)
	}
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(chart.TargetRevision) {
		t.Errorf("redpanda.yaml: targetRevision %q is not a pinned version", chart.TargetRevision)
	}
	if values.RepoURL != gitRepo || values.Ref != "values" || values.Path != "" || values.Chart != "" {
		t.Errorf("redpanda.yaml: values source %+v", values)
	}
	// The tickflow chart's optional Redpanda dependency pins a version too:
	// one Redpanda version for the project.
	if raw, err := os.ReadFile("../../charts/tickflow/Chart.yaml"); err == nil {
		var c struct {
			Dependencies []struct {
				Name, Version, Repository string
			} `yaml:"dependencies"`
		}
		if err := yaml.Unmarshal(raw, &c); err != nil {
			t.Fatalf("charts/tickflow/Chart.yaml: %v", err)
		}
		for _, d := range c.Dependencies {
			if d.Name == "redpanda" && d.Version != chart.TargetRevision {
				t.Errorf("redpanda.yaml pins chart %s, charts/tickflow/Chart.yaml's dependency %s", chart.TargetRevision, d.Version)
			}
		}
	}

	tf := apps["tickflow.yaml"]
	if s := tf.Spec.Source; s == nil || s.RepoURL != gitRepo || s.Path != "charts/tickflow" || s.Helm == nil {
		t.Errorf("tickflow.yaml: source %+v", s)
	} else {
		params := map[string]string{}
		for _, p := range s.Helm.Parameters {
			params[p.Name] = p.Value
		}
		if params["kafka.bootstrapServers"] != "redpanda.redpanda.svc.cluster.local:9093" ||
			params["kafka.schemaRegistryUrl"] != "http://redpanda.redpanda.svc.cluster.local:8081" || len(params) != 2 {
			t.Errorf("tickflow.yaml: helm parameters %v", params)
		}
	}
	if tf.Spec.Destination.Namespace != "tickflow" || !contains(tf.Spec.SyncPolicy.SyncOptions, "ServerSideApply=true") {
		t.Errorf("tickflow.yaml: want namespace tickflow and ServerSideApply=true")
	}

	pl := apps["pipelines.yaml"]
	if s := pl.Spec.Source; s == nil || s.RepoURL != gitRepo || s.Path != "manifests" {
		t.Errorf("pipelines.yaml: source %+v", s)
	}
	if pl.Spec.Destination.Namespace != "tickflow-pipelines" || !contains(pl.Spec.SyncPolicy.SyncOptions, "SkipDryRunOnMissingResource=true") {
		t.Errorf("pipelines.yaml: want namespace tickflow-pipelines and SkipDryRunOnMissingResource=true")
	}

	root := apps["root.yaml"]
	if s := root.Spec.Source; s == nil || s.Path != "manifests/argocd" || root.Spec.Destination.Namespace != "argocd" {
		t.Errorf("root.yaml: want the app of apps for manifests/argocd")
	}

	// Waves: project, then Redpanda, then the chart with the CRDs, then the
	// pipelines that use them.
	order := []struct {
		name string
		w    int
	}{
		{"project", wave(t, project.Metadata)},
		{"redpanda", wave(t, rp.Metadata)},
		{"tickflow", wave(t, tf.Metadata)},
		{"pipelines", wave(t, pl.Metadata)},
	}
	for i := 1; i < len(order); i++ {
		if order[i-1].w >= order[i].w {
			t.Errorf("sync wave of %s (%d) must be below that of %s (%d)", order[i-1].name, order[i-1].w, order[i].name, order[i].w)
		}
	}
	if order[1].w != -2 || order[2].w != -1 || order[3].w != 0 {
		t.Errorf("sync waves redpanda %d, tickflow %d, pipelines %d; want -2, -1, 0", order[1].w, order[2].w, order[3].w)
	}
}
