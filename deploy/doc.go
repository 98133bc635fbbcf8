// Package deploy holds no code: it is the module of the test that checks
// docker-compose.yml against the tally binary. It lives outside go.work so
// compose-go's many dependencies never reach the services' builds.
package deploy
