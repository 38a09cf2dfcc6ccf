package api

import (
	"io/fs"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// wantUIHeaders checks the security headers of every /ui response.
func wantUIHeaders(t *testing.T, target string, header http.Header) {
	t.Helper()
	if got := header.Get("Content-Security-Policy"); got != uiContentSecurityPolicy {
		t.Errorf("GET %s: Content-Security-Policy is %q, want %q", target, got, uiContentSecurityPolicy)
	}
	if got := header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("GET %s: X-Content-Type-Options is %q, want nosniff", target, got)
	}
}

// readUIFile returns an embedded dashboard file, failing the test when it
// is missing.
func readUIFile(t *testing.T, name string) string {
	t.Helper()
	data, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil {
		t.Fatalf("reading embedded ui/%s: %v", name, err)
	}
	return string(data)
}

func TestUIIndexServed(t *testing.T) {
	node := newLeader(t)
	for _, target := range []string{"/ui", "/ui/", "/ui/index.html", "/ui?service=front&user=alice"} {
		rec := node.do(t, http.MethodGet, target, "")

		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: status is %d, want 200; body: %s", target, rec.Code, rec.Body.String())
			continue
		}
		if got := rec.Header().Get("Content-Type"); got != "text/html; charset=utf-8" {
			t.Errorf("GET %s: Content-Type is %q, want text/html; charset=utf-8", target, got)
		}
		wantUIHeaders(t, target, rec.Header())
		if !strings.Contains(rec.Body.String(), `src="/ui/app.js"`) {
			t.Errorf("GET %s: body does not load /ui/app.js: %.200s", target, rec.Body.String())
		}
	}
}

func TestUIFilesContentTypes(t *testing.T) {
	want := map[string]string{
		"index.html": "text/html; charset=utf-8",
		"app.js":     "text/javascript; charset=utf-8",
		"chart.js":   "text/javascript; charset=utf-8",
		"style.css":  "text/css; charset=utf-8",
	}
	node := newLeader(t)

	var served []string
	err := fs.WalkDir(uiFiles, "ui", func(name string, entry fs.DirEntry, err error) error {
		if err != nil || entry.IsDir() {
			return err
		}
		file := strings.TrimPrefix(name, "ui/")
		served = append(served, file)
		target := "/ui/" + file
		rec := node.do(t, http.MethodGet, target, "")

		if rec.Code != http.StatusOK {
			t.Errorf("GET %s: status is %d, want 200; every embedded file needs a content type in uiContentTypes", target, rec.Code)
			return nil
		}
		wantType, listed := want[file]
		if !listed {
			wantType = uiContentTypes[path.Ext(file)]
		}
		if got := rec.Header().Get("Content-Type"); got != wantType {
			t.Errorf("GET %s: Content-Type is %q, want %q", target, got, wantType)
		}
		wantUIHeaders(t, target, rec.Header())
		if got := rec.Body.String(); got != readUIFile(t, file) {
			t.Errorf("GET %s: body differs from the embedded file (%d bytes served)", target, len(got))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walking the embedded files: %v", err)
	}
	for file := range want {
		if !slices.Contains(served, file) {
			t.Errorf("embedded files %v lack %s", served, file)
		}
	}
}

func TestUIUnknownFileNotFound(t *testing.T) {
	node := newLeader(t)
	for _, target := range []string{"/ui/missing.js", "/ui/../server.go", "/ui/ui.go", "/ui/README", "/ui/index.html/x.js"} {
		rec := node.do(t, http.MethodGet, target, "")

		if rec.Code != http.StatusNotFound {
			t.Errorf("GET %s: status is %d, want 404; body: %.200s", target, rec.Code, rec.Body.String())
			continue
		}
		wantError(t, rec, http.StatusNotFound, CodeNotFound)
		wantUIHeaders(t, target, rec.Header())
	}
}

func TestUIOtherMethodRejected(t *testing.T) {
	node := newLeader(t)

	rec := node.do(t, http.MethodPost, "/ui", "{}")

	wantError(t, rec, http.StatusMethodNotAllowed, CodeMethod)
}

// readUIScripts returns the text of every embedded .js file, joined.
func readUIScripts(t *testing.T) string {
	t.Helper()
	names, err := fs.Glob(uiFiles, "ui/*.js")
	if err != nil || len(names) == 0 {
		t.Fatalf("finding the embedded scripts: %v (found %v)", err, names)
	}
	var scripts strings.Builder
	for _, name := range names {
		scripts.WriteString(readUIFile(t, strings.TrimPrefix(name, "ui/")))
		scripts.WriteString("\n")
	}
	return scripts.String()
}

// The dashboard may read only this central's API: the scripts must name no
// other origin and no path outside the read-only routes they poll.
func TestUIScriptSameOriginOnly(t *testing.T) {
	script := readUIScripts(t)

	// The SVG namespace is a name, not a request.
	for _, url := range regexp.MustCompile(`(?i)\b(?:https?|wss?|ftp)://[^'"\s]*`).FindAllString(script, -1) {
		if url != "http://www.w3.org/2000/svg" {
			t.Errorf("the scripts contain the URL %q; the dashboard must use same-origin paths only", url)
		}
	}
	if strings.Contains(script, "'//") || strings.Contains(script, "`//") {
		t.Error("the scripts contain a protocol-relative URL ('//host'); the dashboard must use same-origin paths only")
	}
	for _, module := range regexp.MustCompile(`from '([^']*)'`).FindAllStringSubmatch(script, -1) {
		if !strings.HasPrefix(module[1], "./") {
			t.Errorf("the scripts import %q; want a file next to them (./name.js)", module[1])
		}
	}

	allowed := []string{"/v1/cluster", "/v1/members", "/v1/limits/", "/v1/monitor/"}
	paths := regexp.MustCompile(`/v1/[a-z_]*/?`).FindAllString(script, -1)
	if len(paths) == 0 {
		t.Error("the scripts name no /v1/ path")
	}
	for _, p := range paths {
		if !slices.Contains(allowed, p) {
			t.Errorf("the scripts name the API path %q; allowed are %v", p, allowed)
		}
	}

	// Every request goes through fetchJSON, which sends a GET to its path.
	if n := strings.Count(script, "fetch("); n != 1 {
		t.Errorf("the scripts call fetch %d times, want once (in fetchJSON)", n)
	}
	for _, call := range regexp.MustCompile(`fetchJSON\(([^)]*)`).FindAllStringSubmatch(script, -1) {
		argument := call[1]
		if argument == "path" { // the declaration
			continue
		}
		if !strings.HasPrefix(argument, "'/v1/") && !strings.HasPrefix(argument, "limitPath(") && !strings.HasPrefix(argument, "monitorPath(") {
			t.Errorf("the scripts call fetchJSON(%s); want a '/v1/...' literal, limitPath or monitorPath", argument)
		}
	}
	for _, forbidden := range []string{"method:", "XMLHttpRequest", "WebSocket", "EventSource", "sendBeacon", "import(", "eval(", "innerHTML", "document.write"} {
		if strings.Contains(script, forbidden) {
			t.Errorf("the scripts contain %q; the dashboard sends only GETs through fetchJSON and builds the DOM with DOM methods", forbidden)
		}
	}
}

// The Content-Security-Policy blocks inline scripts and styles, so the page
// must have none, and it must load nothing from another origin.
func TestUIPageNoInlineCode(t *testing.T) {
	page := readUIFile(t, "index.html")

	scripts := regexp.MustCompile(`<script[^>]*>`).FindAllString(page, -1)
	if len(scripts) == 0 {
		t.Error("index.html has no <script> element")
	}
	for _, tag := range scripts {
		if !strings.Contains(tag, `src="/ui/`) {
			t.Errorf("index.html has the inline script %q; put the code in a file under /ui/", tag)
		}
	}
	for _, inline := range []string{"<style", " style=", "javascript:"} {
		if strings.Contains(page, inline) {
			t.Errorf("index.html contains %q, which the Content-Security-Policy blocks", inline)
		}
	}
	if handler := regexp.MustCompile(`\son[a-z]+=`).FindString(page); handler != "" {
		t.Errorf("index.html has the inline event handler %q", handler)
	}
	for _, link := range regexp.MustCompile(`(?:src|href|action)="([^"]*)"`).FindAllStringSubmatch(page, -1) {
		if link[1] != "/ui" && !strings.HasPrefix(link[1], "/ui/") {
			t.Errorf("index.html links %q; want a path under /ui", link[1])
		}
	}

	style := readUIFile(t, "style.css")
	for _, external := range []string{"@import", "url("} {
		if strings.Contains(style, external) {
			t.Errorf("style.css contains %q; the page loads no other resources", external)
		}
	}
}

// The access token must never reach a URL, where browsers keep it in the
// history, or outlive the tab.
func TestUITokenFieldKeepsTokenOutOfURLs(t *testing.T) {
	page := readUIFile(t, "index.html")
	form := regexp.MustCompile(`(?s)<form id="token-form"[^>]*>.*?</form>`).FindString(page)
	if form == "" {
		t.Fatal("index.html has no form with id token-form")
	}
	if !strings.Contains(form, `method="post"`) {
		t.Errorf("the token form %q does not post; without JavaScript a GET form puts the token in the URL", form)
	}
	if !strings.Contains(form, `type="password"`) {
		t.Errorf("the token form %q has no password input", form)
	}

	script := readUIScripts(t)
	if strings.Contains(script, "localStorage") {
		t.Error("the scripts use localStorage; the token belongs in sessionStorage, which ends with the tab")
	}
	if !strings.Contains(script, "sessionStorage.setItem(TOKEN_KEY") {
		t.Error("the scripts do not store the token in sessionStorage")
	}
	if !strings.Contains(script, "Authorization: `Bearer ${token}`") {
		t.Error("fetchJSON does not send the token as Authorization: Bearer")
	}
}
