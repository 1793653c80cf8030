// promqlcheck: every PromQL expression of the Grafana dashboards and of the
// alert rules parses with Prometheus' own parser (github.com/prometheus/prometheus/promql/parser,
// the version promtool is built from, with Prometheus' default options: no
// experimental functions), and every metric and label name it uses is one
// that real tickflow processes export (their /metrics scrapes, given as
// files) or that the PodMonitor/ServiceMonitor adds.
//
// Usage:
//
//	promqlcheck -exports worker.prom,producer.prom,operator.prom \
//	  -target-labels namespace,pod,component,query,producer,job,instance \
//	  [-rules rules.yaml ...] [-dashboard file.json ...]
//	promqlcheck -relabel-podmonitor podmonitor.yaml -pods pods.json
//
// The second form (relabel.go) prints what a PodMonitor's selector and
// relabelling make of real pods.
//
// Grafana variables are substituted first: $__rate_interval, $__interval and
// $__range by 5m, any other $var / ${var} / ${var:format} by a plain word.
// Exit status: 0 all good, 1 unknown metric or label names only (the caller
// may scrape again and retry: a family can appear late), 2 anything else
// (a parse error, an unreadable file, no expression found).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

type expr struct {
	where string // file and panel / rule
	text  string // as written
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var rules, dashboards listFlag
	exports := flag.String("exports", "", "comma-separated /metrics scrape files")
	targetLabels := flag.String("target-labels", "", "comma-separated labels the scrape config adds")
	flag.Var(&rules, "rules", "a Prometheus rule file (groups: [...]); repeatable")
	flag.Var(&dashboards, "dashboard", "a Grafana dashboard JSON file; repeatable")
	podMonitorFile := flag.String("relabel-podmonitor", "", "instead: apply this PodMonitor's relabelling to the pods of -pods")
	podsFile := flag.String("pods", "", "with -relabel-podmonitor: `kubectl get pods -o json` output")
	flag.Parse()
	if *podMonitorFile != "" {
		if err := relabelPods(*podMonitorFile, *podsFile); err != nil {
			fatal(err)
		}
		return
	}

	metrics, labelNames, err := readExports(strings.Split(*exports, ","))
	if err != nil {
		fatal(err)
	}
	for _, l := range strings.Split(*targetLabels, ",") {
		if l != "" {
			labelNames[l] = true
		}
	}

	var exprs []expr
	for _, f := range rules {
		es, err := ruleExprs(f)
		if err != nil {
			fatal(err)
		}
		exprs = append(exprs, es...)
	}
	for _, f := range dashboards {
		es, err := dashboardExprs(f)
		if err != nil {
			fatal(err)
		}
		exprs = append(exprs, es...)
	}
	if len(exprs) == 0 {
		fatal(fmt.Errorf("no expression to check (give -rules or -dashboard)"))
	}

	p := parser.NewParser(parser.Options{})
	parseErrors, unknown := 0, 0
	used := map[string]bool{}
	for _, e := range exprs {
		text := substitute(e.text)
		ast, err := p.ParseExpr(text)
		if err != nil {
			fmt.Printf("PARSE ERROR %s\n  %s\n  %v\n", e.where, text, err)
			parseErrors++
			continue
		}
		names, labs := references(ast)
		if len(names) == 0 && !strings.Contains(text, "vector(") && !strings.Contains(text, "time()") {
			fmt.Printf("NO METRIC %s: %s\n", e.where, text)
			parseErrors++
		}
		for _, n := range names {
			used[n] = true
			if !metrics[n] {
				fmt.Printf("UNKNOWN METRIC %q in %s\n  %s\n", n, e.where, text)
				unknown++
			}
		}
		for _, l := range labs {
			if !labelNames[l] {
				fmt.Printf("UNKNOWN LABEL %q in %s\n  %s\n", l, e.where, text)
				unknown++
			}
		}
	}
	list := make([]string, 0, len(used))
	for n := range used {
		list = append(list, n)
	}
	sort.Strings(list)
	fmt.Printf("%d expressions parsed (%d parse errors); %d metric names used, %d names or labels not exported\n",
		len(exprs)-parseErrors, parseErrors, len(list), unknown)
	fmt.Printf("metrics used: %s\n", strings.Join(list, " "))
	switch {
	case parseErrors > 0:
		os.Exit(2)
	case unknown > 0:
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "promqlcheck:", err)
	os.Exit(2)
}

// readExports parses Prometheus text expositions: the series names a query
// may use (histograms as _bucket/_sum/_count, summaries as the name,
// _sum/_count) and every label name seen on a sample.
func readExports(files []string) (map[string]bool, map[string]bool, error) {
	metrics := map[string]bool{}
	labelNames := map[string]bool{}
	for _, f := range files {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, err
		}
		tp := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := tp.TextToMetricFamilies(bytes.NewReader(b))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f, err)
		}
		// A family the process declares (# TYPE) but has no series of yet
		// (e.g. dead letters before the first one) is exported all the same;
		// the parser leaves it out, so it is added here without labels.
		for _, line := range strings.Split(string(b), "\n") {
			var name, typ string
			if n, _ := fmt.Sscanf(line, "# TYPE %s %s", &name, &typ); n != 2 || fams[name] != nil {
				continue
			}
			t, ok := map[string]dto.MetricType{"counter": dto.MetricType_COUNTER, "gauge": dto.MetricType_GAUGE,
				"histogram": dto.MetricType_HISTOGRAM, "summary": dto.MetricType_SUMMARY, "untyped": dto.MetricType_UNTYPED}[typ]
			if !ok {
				return nil, nil, fmt.Errorf("%s: unknown metric type in %q", f, line)
			}
			fams[name] = &dto.MetricFamily{Name: &name, Type: &t}
		}
		for name, fam := range fams {
			switch fam.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					metrics[name+s] = true
				}
				labelNames["le"] = true
			case dto.MetricType_SUMMARY:
				for _, s := range []string{"", "_sum", "_count"} {
					metrics[name+s] = true
				}
				labelNames["quantile"] = true
			default:
				metrics[name] = true
			}
			for _, m := range fam.GetMetric() {
				for _, l := range m.GetLabel() {
					labelNames[l.GetName()] = true
				}
			}
		}
	}
	if len(metrics) == 0 {
		return nil, nil, fmt.Errorf("no metric family in the exports %v", files)
	}
	return metrics, labelNames, nil
}

func ruleExprs(file string) ([]expr, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var out []expr
	for _, g := range doc.Groups {
		for _, r := range g.Rules {
			out = append(out, expr{fmt.Sprintf("%s: group %s, rule %s%s", file, g.Name, r.Alert, r.Record), r.Expr})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no rule", file)
	}
	return out, nil
}

// dashboardExprs collects the Prometheus targets of every panel (rows and
// their collapsed panels included) and the Prometheus query variables
// (label_values(selector, label), query_result(expr), metrics(regex) is refused).
func dashboardExprs(file string) ([]expr, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Datasource json.RawMessage `json:"datasource"`
				Query      json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var out []expr
	var bad []string
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, t := range p.Targets {
				where := fmt.Sprintf("%s: panel %q, target %s", file, p.Title, t.RefID)
				if t.Expr != "" {
					out = append(out, expr{where, t.Expr})
				} else if strings.Contains(string(t.Datasource)+string(p.Datasource), "prometheus") {
					// A Prometheus target whose query this check cannot see.
					bad = append(bad, where)
				}
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	if len(bad) > 0 {
		return nil, fmt.Errorf("Prometheus targets without expr: %s", strings.Join(bad, "; "))
	}
	labelValues := regexp.MustCompile(`^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$`)
	queryResult := regexp.MustCompile(`^\s*query_result\((.*)\)\s*$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" || !strings.Contains(string(v.Datasource), "prometheus") {
			continue
		}
		var q string
		var qo struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			if err := json.Unmarshal(v.Query, &qo); err != nil {
				return nil, fmt.Errorf("%s: variable %s: query: %w", file, v.Name, err)
			}
			q = qo.Query
		}
		where := fmt.Sprintf("%s: variable %s", file, v.Name)
		if m := labelValues.FindStringSubmatch(q); m != nil {
			// The label itself must exist too: select it.
			out = append(out, expr{where, fmt.Sprintf("count by (%s) (%s)", m[2], m[1])})
		} else if m := queryResult.FindStringSubmatch(q); m != nil {
			out = append(out, expr{where, m[1]})
		} else {
			return nil, fmt.Errorf("%s: unsupported variable query %q", where, q)
		}
	}
	return out, nil
}

type panel struct {
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

var (
	intervalVar = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`)
	anyVar      = regexp.MustCompile(`\$\{[A-Za-z0-9_]+(:[A-Za-z0-9_]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\]`)
)

// substitute replaces Grafana's variables by values the parser accepts.
func substitute(s string) string {
	s = intervalVar.ReplaceAllString(s, "5m")
	return anyVar.ReplaceAllString(s, "grafana_variable")
}

// references returns the metric names and label names an expression uses
// (label matchers, by/without, on/ignoring/group_left/group_right).
func references(e parser.Expr) (names, labs []string) {
	seenN, seenL := map[string]bool{}, map[string]bool{}
	addL := func(ls []string) {
		for _, l := range ls {
			if !seenL[l] {
				seenL[l] = true
				labs = append(labs, l)
			}
		}
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch x := n.(type) {
		case *parser.VectorSelector:
			name := x.Name
			for _, m := range x.LabelMatchers {
				if m.Name == labels.MetricName {
					if m.Type == labels.MatchEqual {
						name = m.Value
					}
					continue
				}
				addL([]string{m.Name})
			}
			if name != "" && !seenN[name] {
				seenN[name] = true
				names = append(names, name)
			}
		case *parser.AggregateExpr:
			addL(x.Grouping)
		case *parser.BinaryExpr:
			if x.VectorMatching != nil {
				addL(x.VectorMatching.MatchingLabels)
				addL(x.VectorMatching.Include)
			}
		}
		return nil
	})
	return names, labs
}
