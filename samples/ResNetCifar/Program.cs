using ResNetCifar;

return new SampleCommands().Build().Parse(args).Invoke();
