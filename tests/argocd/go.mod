module tickflow.io/tests/argocd

go 1.22

require (
	github.com/yuin/gopher-lua v1.1.1
	gopkg.in/yaml.v3 v3.0.1
)
