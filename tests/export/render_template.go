// Renders an Ollama Modelfile TEMPLATE the way Ollama does: Go's text/template over .Messages.
//
//	go run render_template.go TEMPLATE_FILE < messages.json
//
// messages.json is a list of {"role": …, "content": …}; the rendered prompt goes to stdout.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// The fields of Ollama's template values that a text conversation uses.
type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var messages []Message
	if err := json.NewDecoder(os.Stdin).Decode(&messages); err != nil {
		panic(err)
	}
	parsed := template.Must(template.New("").Option("missingkey=zero").Parse(string(source)))
	if err := parsed.Execute(os.Stdout, Values{Messages: messages}); err != nil {
		panic(err)
	}
}
