{{/*
Chart name (nameOverride wins), DNS-label safe.
*/}}
{{- define "tickflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified prefix: fullnameOverride, else the release name if it already
contains the chart name, else "<release>-<chart>".
*/}}
{{- define "tickflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the operator's Deployment, Service, Role and (default) ServiceAccount:
"<fullname>-operator", e.g. "tickflow-operator".
*/}}
{{- define "tickflow.operatorName" -}}
{{- printf "%s-operator" (include "tickflow.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the cluster-scoped RBAC objects. ClusterRoles are not namespaced, so
the release namespace is part of the name: two releases in different
namespaces (each with its own watchNamespace) do not collide.
*/}}
{{- define "tickflow.clusterRoleName" -}}
{{- printf "%s-%s" (include "tickflow.operatorName" .) .Release.Namespace }}
{{- end }}

{{/*
chart label value: "<name>-<version>".
*/}}
{{- define "tickflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of the operator pods. Immutable in a Deployment: never add
anything here that can change between releases.
*/}}
{{- define "tickflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tickflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Common labels of every object of the chart.
*/}}
{{- define "tickflow.labels" -}}
helm.sh/chart: {{ include "tickflow.chart" . }}
{{ include "tickflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tickflow
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "tickflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tickflow.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image references "<repository>:<tag>", the tag defaulting to appVersion.
*/}}
{{- define "tickflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tickflow.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) }}
{{- end }}

{{/*
Kafka defaults, rendered with tpl; empty falls back to the in-cluster Redpanda
of the release namespace.
*/}}
{{- define "tickflow.kafkaBootstrapServers" -}}
{{- $v := tpl (.Values.kafka.bootstrapServers | default "") . | trim }}
{{- if $v }}{{ $v }}{{ else }}{{ printf "redpanda.%s.svc.cluster.local:9093" .Release.Namespace }}{{ end }}
{{- end }}

{{- define "tickflow.schemaRegistryUrl" -}}
{{- $v := tpl (.Values.kafka.schemaRegistryUrl | default "") . | trim }}
{{- if $v }}{{ $v }}{{ else }}{{ printf "http://redpanda.%s.svc.cluster.local:8081" .Release.Namespace }}{{ end }}
{{- end }}

{{/*
Checks that a schema cannot express (fail with a clear message).
*/}}
{{- define "tickflow.validate" -}}
{{- if and .Values.watchNamespace .Values.watchNamespaces }}
{{- fail "set watchNamespace or watchNamespaces, not both (put every namespace in watchNamespaces)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without a Lease every replica would reconcile the same resources" }}
{{- end }}
{{- end }}

{{/*
"true" when the bundled Redpanda chart is switched on (redpanda.enabled, the
condition of the dependency in Chart.yaml), else "".
*/}}
{{- define "tickflow.redpandaEnabled" -}}
{{- if and (kindIs "map" .Values.redpanda) (eq (toString .Values.redpanda.enabled) "true") }}true{{ end }}
{{- end }}

{{/*
The operator's RBAC rules (ClusterRole, or a Role per watchNamespaces entry).
*/}}
{{- define "tickflow.operatorRules" -}}
# The custom resources: watched, never created or deleted by the operator.
- apiGroups: ["tickflow.io"]
  resources: ["streamqueries", "marketproducers"]
  verbs: ["get", "list", "watch"]
# Status written back (phase, conditions, checkpoint, lag, ...).
- apiGroups: ["tickflow.io"]
  resources: ["streamqueries/status", "marketproducers/status"]
  verbs: ["get", "patch", "update"]
# Per-resource worker objects, server-side applied; owned by the resource,
# so the garbage collector (not the operator) deletes them.
- apiGroups: [""]
  resources: ["configmaps", "services", "persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Deployments likewise; delete only for the worker Deployments a query with
# spec.parallelism no longer needs after a scale-down (already at zero).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods: the operator reads each pod's /status endpoint by pod IP.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Events on transitions (both APIs: core/v1 and events.k8s.io/v1).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
