// The PodMonitor's relabelling applied, with Prometheus' own relabel code,
// to the target labels Prometheus' Kubernetes service discovery (role pod)
// derives from real pods: which pods the PodMonitor selects, whether they
// have its port, and the labels their series end up with.

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"go.yaml.in/yaml/v3"
)

type podMonitor struct {
	Kind     string `yaml:"kind"`
	Metadata struct {
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels      map[string]string `yaml:"matchLabels"`
			MatchExpressions []struct {
				Key      string   `yaml:"key"`
				Operator string   `yaml:"operator"`
				Values   []string `yaml:"values"`
			} `yaml:"matchExpressions"`
		} `yaml:"selector"`
		NamespaceSelector struct {
			Any        bool     `yaml:"any"`
			MatchNames []string `yaml:"matchNames"`
		} `yaml:"namespaceSelector"`
		Endpoints []struct {
			Port        string `yaml:"port"`
			Relabelings []struct {
				SourceLabels []string `yaml:"sourceLabels"`
				Separator    *string  `yaml:"separator"`
				TargetLabel  string   `yaml:"targetLabel"`
				Regex        *string  `yaml:"regex"`
				Replacement  *string  `yaml:"replacement"`
				Action       string   `yaml:"action"`
			} `yaml:"relabelings"`
		} `yaml:"podMetricsEndpoints"`
	} `yaml:"spec"`
}

type podList struct {
	Items []struct {
		Metadata struct {
			Name      string            `json:"name"`
			Namespace string            `json:"namespace"`
			Labels    map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Containers []struct {
				Ports []struct {
					Name string `json:"name"`
				} `json:"ports"`
			} `json:"containers"`
		} `json:"spec"`
	} `json:"items"`
}

type relabelResult struct {
	Pod      string            `json:"pod"`
	Selected bool              `json:"selected"`
	HasPort  bool              `json:"has_port"`
	Kept     bool              `json:"kept"`
	Labels   map[string]string `json:"labels"`
}

var invalidLabelChar = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// relabelPods prints, as JSON, what the PodMonitor (a YAML file with one
// PodMonitor) makes of each pod of `kubectl get pods -o json`.
func relabelPods(pmFile, podsFile string) error {
	b, err := os.ReadFile(pmFile)
	if err != nil {
		return err
	}
	var pm podMonitor
	if err := yaml.Unmarshal(b, &pm); err != nil || pm.Kind != "PodMonitor" || len(pm.Spec.Endpoints) != 1 {
		return fmt.Errorf("%s: not one PodMonitor with one endpoint (%v)", pmFile, err)
	}
	ep := pm.Spec.Endpoints[0]
	var cfgs []*relabel.Config
	for _, r := range ep.Relabelings {
		// Prometheus' own YAML form, so that its defaults apply.
		m := map[string]any{"source_labels": r.SourceLabels, "action": strings.ToLower(r.Action)}
		if r.TargetLabel != "" {
			m["target_label"] = r.TargetLabel
		}
		if r.Separator != nil {
			m["separator"] = *r.Separator
		}
		if r.Regex != nil {
			m["regex"] = *r.Regex
		}
		if r.Replacement != nil {
			m["replacement"] = *r.Replacement
		}
		y, _ := yaml.Marshal(m)
		var c relabel.Config
		if err := yaml.Unmarshal(y, &c); err != nil {
			return fmt.Errorf("relabeling %v: %w", r, err)
		}
		if err := c.Validate(model.UTF8Validation); err != nil {
			return fmt.Errorf("relabeling %v: %w", r, err)
		}
		cfgs = append(cfgs, &c)
	}
	b, err = os.ReadFile(podsFile)
	if err != nil {
		return err
	}
	var pods podList
	if err := json.Unmarshal(b, &pods); err != nil {
		return fmt.Errorf("%s: %w", podsFile, err)
	}
	var out []relabelResult
	for _, p := range pods.Items {
		r := relabelResult{Pod: p.Metadata.Namespace + "/" + p.Metadata.Name, Selected: true}
		for k, v := range pm.Spec.Selector.MatchLabels {
			if p.Metadata.Labels[k] != v {
				r.Selected = false
			}
		}
		for _, e := range pm.Spec.Selector.MatchExpressions {
			v, ok := p.Metadata.Labels[e.Key]
			in := false
			for _, x := range e.Values {
				in = in || (ok && x == v)
			}
			switch e.Operator {
			case "In":
				r.Selected = r.Selected && in
			case "NotIn":
				r.Selected = r.Selected && !in
			case "Exists":
				r.Selected = r.Selected && ok
			case "DoesNotExist":
				r.Selected = r.Selected && !ok
			default:
				return fmt.Errorf("matchExpressions operator %q", e.Operator)
			}
		}
		nsOK := pm.Spec.NamespaceSelector.Any
		for _, n := range pm.Spec.NamespaceSelector.MatchNames {
			nsOK = nsOK || n == p.Metadata.Namespace
		}
		if len(pm.Spec.NamespaceSelector.MatchNames) == 0 && !pm.Spec.NamespaceSelector.Any {
			nsOK = p.Metadata.Namespace == pm.Metadata.Namespace
		}
		r.Selected = r.Selected && nsOK
		for _, c := range p.Spec.Containers {
			for _, port := range c.Ports {
				r.HasPort = r.HasPort || port.Name == ep.Port
			}
		}
		// The target labels of Kubernetes service discovery, role pod.
		lb := labels.NewBuilder(labels.EmptyLabels())
		lb.Set("__address__", "pod-ip:8080")
		lb.Set("__metrics_path__", "/metrics")
		lb.Set("__meta_kubernetes_namespace", p.Metadata.Namespace)
		lb.Set("__meta_kubernetes_pod_name", p.Metadata.Name)
		lb.Set("__meta_kubernetes_pod_container_port_name", ep.Port)
		for k, v := range p.Metadata.Labels {
			name := invalidLabelChar.ReplaceAllString(k, "_")
			lb.Set("__meta_kubernetes_pod_label_"+name, v)
			lb.Set("__meta_kubernetes_pod_labelpresent_"+name, "true")
		}
		r.Kept = relabel.ProcessBuilder(lb, cfgs...)
		r.Labels = map[string]string{}
		lb.Labels().Range(func(l labels.Label) {
			if !strings.HasPrefix(l.Name, "__") {
				r.Labels[l.Name] = l.Value
			}
		})
		out = append(out, r)
	}
	if len(out) == 0 {
		return fmt.Errorf("%s: no pod", podsFile)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
