"""Local fakes for the trigger tests: platform API servers, resource stand-ins, signers."""
