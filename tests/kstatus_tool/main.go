// Command kstatus judges Kubernetes objects with the real kstatus rules
// (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute), the rules Flux uses for health.
//
// It reads one JSON object per line on stdin and writes, for each, one JSON line on stdout:
//
//	{"status": "Current", "message": "Resource is Ready"}
//
// and flushes after every line, so one long-running process serves a whole test session.
// An input line that is not a JSON object, or an object kstatus cannot judge, still gets
// exactly one answer: status "Unknown", the error as the message, and an "error" field
// ("decode" or "compute") saying which. tests/kstatus.py builds and drives this program.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type answer struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Error   string `json:"error,omitempty"`
}

func judge(line []byte) answer {
	// utiljson keeps whole numbers as int64, as the API machinery does; kstatus reads
	// metadata.generation and status.observedGeneration with NestedInt64.
	var obj map[string]interface{}
	if err := utiljson.Unmarshal(line, &obj); err != nil {
		return answer{Status: string(status.UnknownStatus), Message: err.Error(), Error: "decode"}
	}
	if obj == nil {
		return answer{Status: string(status.UnknownStatus), Message: "expected a JSON object, got null", Error: "decode"}
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		return answer{Status: string(status.UnknownStatus), Message: err.Error(), Error: "compute"}
	}
	return answer{Status: string(res.Status), Message: res.Message}
}

func main() {
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out) // Encode ends every value with a newline
	for {
		line, err := in.ReadBytes('\n') // no line-length limit: a Pipeline's status can be large
		if len(line) > 0 && !(len(line) == 1 && line[0] == '\n') {
			if encErr := enc.Encode(judge(line)); encErr != nil {
				fmt.Fprintln(os.Stderr, "kstatus: writing the answer:", encErr)
				os.Exit(1)
			}
			if flushErr := out.Flush(); flushErr != nil {
				os.Exit(1) // the reader went away
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: reading stdin:", err)
			os.Exit(1)
		}
	}
}
