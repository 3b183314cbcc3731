// Command k8s_names answers, for each (rule, value) pair read as JSON on stdin, what Kubernetes' own validation
// functions (k8s.io/apimachinery/pkg/util/validation, the ones the API server calls) say about the value: a JSON
// list of error lists on stdout, empty where the value is valid.
//
//	echo '[{"rule":"dns1123_label","value":"Team_A"}]' | go run .
//
// The tests build it once (tests/integration/test_kubernetes_names.py) and hold scoring.config.k8s_names to its answers.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/util/validation"
)

type query struct {
	Rule  string `json:"rule"`
	Value string `json:"value"`
}

var rules = map[string]func(string) []string{
	// Namespace names (apimachinery pkg/api/validation.ValidateNamespaceName is NameIsDNSLabel, i.e. this).
	"dns1123_label": validation.IsDNS1123Label,
	// ConfigMap, Secret, ServiceAccount, PriorityClass, Pod and custom resource names (NameIsDNSSubdomain).
	"dns1123_subdomain": validation.IsDNS1123Subdomain,
	// Service names; spark-operator's webhook holds SparkApplication names to it too.
	"dns1035_label": validation.IsDNS1035Label,
	// ConfigMap and Secret data keys.
	"config_map_key": validation.IsConfigMapKey,
	// Label values.
	"label_value": validation.IsValidLabelValue,
	// Label and annotation keys, node selector and toleration keys.
	"qualified_name": validation.IsQualifiedName,
}

func main() {
	var queries []query
	if err := json.NewDecoder(os.Stdin).Decode(&queries); err != nil {
		fmt.Fprintln(os.Stderr, "k8s_names: bad input:", err)
		os.Exit(2)
	}
	answers := make([][]string, len(queries))
	for i, q := range queries {
		check, ok := rules[q.Rule]
		if !ok {
			fmt.Fprintln(os.Stderr, "k8s_names: unknown rule:", q.Rule)
			os.Exit(2)
		}
		answers[i] = append([]string{}, check(q.Value)...)
	}
	if err := json.NewEncoder(os.Stdout).Encode(answers); err != nil {
		fmt.Fprintln(os.Stderr, "k8s_names:", err)
		os.Exit(1)
	}
}
