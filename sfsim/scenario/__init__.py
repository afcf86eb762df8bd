"""The scenario: typed, validated configuration, overrides, plan files and default resolvers."""
