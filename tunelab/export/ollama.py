'''An Ollama Modelfile for an exported GGUF: the prompt format the model was trained on, and where it stops.

    FROM ./model.gguf
    TEMPLATE """…"""          # Go text/template over Ollama's .Messages
    PARAMETER stop "<end_of_turn>"
    SYSTEM """…"""            # when the run had one system prompt for every example

Ollama renders prompts with its own Go template, not the model's Jinja chat template, so a Modelfile whose
TEMPLATE differs from training by a newline makes the model answer off-format — the most reported export
failure in this field. The template here renders, for any conversation of system, user and assistant
messages, exactly the text tunelab's Gemma template renders at inference (a test runs it through Go's
text/template, as Ollama does, and compares the strings). Three differences, by design or by limit:

- the BOS token is not in the text: Ollama's tokenizer adds it (the GGUF says `add_bos_token`);
- Go templates cannot trim, so message text is used as it is; the training renderer trims surrounding
  whitespace, which only matters for messages that begin or end with spaces or newlines;
- tools are not described in this template (Ollama's tool format is its own), so a run trained on tool
  calls is served for text only; `tunelab serve` keeps the trained tool-call format.
'''

from __future__ import annotations

from tunelab.conversation.templates import GEMMA_CHAT_TEMPLATE

# tunelab's Gemma template (conversation/templates.py) for text conversations, in Go's text/template: a
# first system message is folded into the first user turn after a blank line; with no user turn to fold
# into, it gets a user turn of its own; the model's turn is opened after any message but its own.
GEMMA_OLLAMA_TEMPLATE = """\
{{- /* every character of the prompt is written inside an action, so the layout here is trimmed away */ -}}
{{- $system := "" }}{{ $turns := .Messages }}
{{- if and .Messages (eq (index .Messages 0).Role "system") }}
  {{- $system = printf "%s\\n\\n" (index .Messages 0).Content }}{{ $turns = slice .Messages 1 }}
{{- end }}
{{- if and $system (or (not $turns) (ne (index $turns 0).Role "user")) }}
  {{- printf "<start_of_turn>user\\n%s<end_of_turn>\\n" (index .Messages 0).Content }}{{ $system = "" }}
{{- end }}
{{- $last := "" }}
{{- range $i, $message := $turns }}
  {{- if eq $message.Role "assistant" }}{{ "<start_of_turn>model\\n" }}{{ else }}{{ "<start_of_turn>user\\n" }}{{ end }}
  {{- if and (eq $i 0) $system }}{{ $system }}{{ end }}
  {{- $message.Content }}{{ "<end_of_turn>\\n" }}
  {{- $last = $message.Role }}
{{- end }}
{{- if ne $last "assistant" }}{{ "<start_of_turn>model\\n" }}{{ end }}"""

TEMPLATES = {GEMMA_CHAT_TEMPLATE: GEMMA_OLLAMA_TEMPLATE}


def ollama_template(chat_template: str) -> str | None:
    """The Go template for a run's chat template, or None when there is none written for it."""
    return TEMPLATES.get(chat_template)


def modelfile(gguf_name: str, chat_template: str, stop_tokens: list[str], system: str | None = None) -> str:
    """The Modelfile's text. Without a Go template for this chat template, TEMPLATE is left out and Ollama
    picks one by matching the GGUF's `tokenizer.chat_template` against the templates it knows."""
    lines = [f"FROM ./{gguf_name}"]
    template = ollama_template(chat_template)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    lines += [f'PARAMETER stop "{_quoted(stop)}"' for stop in stop_tokens]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
