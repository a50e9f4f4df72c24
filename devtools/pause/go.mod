module github.com/secprofiles/secprofiles/devtools/pause

go 1.24.0
