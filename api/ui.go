package api

import (
	"embed"
	"fmt"
	"io/fs"
	"net/http"
	"path"

	"github.com/labstack/echo/v4"
)

// uiFiles holds the dashboard served at /ui: a static page whose script
// polls this central's API from the browser.
//
//go:embed ui
var uiFiles embed.FS

// uiContentSecurityPolicy lets the dashboard load its script, style sheet
// and data from this central only: no inline scripts or styles, no other
// origin, no plugins, and no framing by other pages.
const uiContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// uiContentTypes maps the extensions of the dashboard's files to their media
// types. They are fixed here because mime.TypeByExtension also reads the
// system's mime.types, which differs between machines.
var uiContentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// serveUI handles GET /ui and GET /ui/*. It serves the embedded file the
// path names, and index.html for /ui and /ui/. Every response, a 404
// included, carries the Content-Security-Policy.
func (s *Server) serveUI(c echo.Context) error {
	header := c.Response().Header()
	header.Set("Content-Security-Policy", uiContentSecurityPolicy)
	header.Set("X-Content-Type-Options", "nosniff")
	header.Set("Referrer-Policy", "no-referrer")

	name := c.Param("*")
	if name == "" {
		name = "index.html"
	}
	contentType, known := uiContentTypes[path.Ext(name)]
	if !known || !fs.ValidPath(name) {
		return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("dashboard file %q not found; the dashboard is at /ui", name))
	}
	data, err := fs.ReadFile(uiFiles, "ui/"+name)
	if err != nil {
		return newError(http.StatusNotFound, CodeNotFound, fmt.Sprintf("dashboard file %q not found; the dashboard is at /ui", name))
	}
	// The files change only with the binary, so browsers revalidate instead
	// of keeping an old script after an upgrade.
	header.Set("Cache-Control", "no-cache")
	return c.Blob(http.StatusOK, contentType, data)
}
